"""Fault injection: make chosen requests fail, stall, drop or lie, from a test."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import attrs

__all__ = ["Fault", "FaultInjector", "RequestInfo"]


@attrs.frozen(kw_only=True)
class RequestInfo:
    """The parts of a request that a :class:`Fault` can match on."""

    method: str
    bucket: str | None
    key: str | None
    query: Sequence[tuple[str, str]]
    operation: str


def _check_positive(instance: Fault, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"Fault.{attribute.name} must be >= 1, got {value}")


@attrs.define(kw_only=True, eq=False)
class Fault:
    """One fault rule. Matching criteria left as ``None`` match anything.

    The rule counts the requests it matches; the ``nth`` matching request and the
    ``times - 1`` matching requests after it are faulted (``times=None``: all from the
    ``nth`` on).  What happens to a faulted request is the combination of:

    * ``delay``: sleep this many seconds before handling it;
    * ``drop_connection``: close the connection without any answer (the client sees a
      disconnect / protocol error), after reading nothing of the request body;
    * ``status`` (with optional ``code``/``message``): answer this OSS error instead of
      handling the request (nothing is stored);
    * ``corrupt_crc``: handle it normally but answer a wrong ``x-oss-hash-crc64ecma``;
    * ``corrupt_body``: handle it normally but flip the first byte of a response body
      (e.g. a GetObject download);
    * ``drop_after_bytes``: handle it normally, send the response headers and this many
      body bytes, then close the connection (a download cut off mid-body).

    Attributes:
        method: HTTP method to match, e.g. ``"PUT"``.
        operation: OSS operation to match, e.g. ``"UploadPart"`` or ``"PutObject"``.
        bucket: Bucket to match.
        key: Exact object key to match.
        key_prefix: Object key prefix to match.
        query_has: Name of a query parameter that must be present, e.g. ``"partNumber"``.
        query_equals: ``(name, value)`` a query parameter must equal, e.g.
            ``("partNumber", "2")``.
        nth: The first matching request that is faulted (1-based).
        times: How many matching requests are faulted; ``None`` for no limit.
        matched: How many requests this rule has matched so far.
        fired: How many requests this rule has faulted so far.
    """

    method: str | None = None
    operation: str | None = None
    bucket: str | None = None
    key: str | None = None
    key_prefix: str | None = None
    query_has: str | None = None
    query_equals: tuple[str, str] | None = None
    nth: int = attrs.field(default=1, validator=_check_positive)
    times: int | None = 1
    status: int | None = None
    code: str | None = None
    message: str | None = None
    drop_connection: bool = False
    delay: float = 0.0
    corrupt_crc: bool = False
    corrupt_body: bool = False
    drop_after_bytes: int | None = None
    matched: int = 0
    fired: int = 0

    def __attrs_post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times must be >= 1 or None, got {self.times}")
        if self.status is not None and not 300 <= self.status <= 599:
            raise ValueError(f"Fault.status must be an HTTP error status, got {self.status}")
        if self.delay < 0:
            raise ValueError("Fault.delay must be >= 0")
        if not (
            self.drop_connection
            or self.status is not None
            or self.delay
            or self.corrupt_crc
            or self.corrupt_body
            or self.drop_after_bytes is not None
        ):
            raise ValueError(
                "a Fault needs an effect: status=, drop_connection=, delay=, corrupt_crc=, "
                "corrupt_body= or drop_after_bytes="
            )

    def matches(self, request: RequestInfo) -> bool:
        """Whether ``request`` meets every criterion of this rule (does not count it)."""
        if self.method is not None and request.method != self.method.upper():
            return False
        if self.operation is not None and request.operation != self.operation:
            return False
        if self.bucket is not None and request.bucket != self.bucket:
            return False
        if self.key is not None and request.key != self.key:
            return False
        if self.key_prefix is not None and not (request.key or "").startswith(self.key_prefix):
            return False
        names = {name for name, _ in request.query}
        if self.query_has is not None and self.query_has not in names:
            return False
        return self.query_equals is None or tuple(self.query_equals) in {
            tuple(p) for p in request.query
        }

    @property
    def exhausted(self) -> bool:
        """True once the rule has faulted ``times`` requests."""
        return self.times is not None and self.fired >= self.times


class FaultInjector:
    """The thread-safe set of :class:`Fault` rules of one emulator (``emu.faults``).

    Example:
        >>> emu.faults.add(operation="UploadPart", nth=2, status=500)
        >>> emu.faults.add(method="PUT", query_has="partNumber", drop_connection=True)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def add(self, fault: Fault | None = None, /, **criteria: object) -> Fault:
        """Add a rule, given as a :class:`Fault` or as its keyword arguments.

        Returns:
            The rule, whose ``matched``/``fired`` counters tests can inspect.
        """
        if fault is None:
            fault = Fault(**criteria)  # type: ignore[arg-type]
        elif criteria:
            raise TypeError("pass either a Fault or keyword arguments, not both")
        with self._lock:
            self._rules.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Remove one rule (no error if it is already gone)."""
        with self._lock:
            self._rules = [r for r in self._rules if r is not fault]

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Fault]:
        """A snapshot of the current rules."""
        with self._lock:
            return list(self._rules)

    def match(self, request: RequestInfo) -> list[Fault]:
        """Count ``request`` against every rule; return the rules that fire for it."""
        fired: list[Fault] = []
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(request):
                    continue
                rule.matched += 1
                if rule.matched >= rule.nth:
                    rule.fired += 1
                    fired.append(rule)
        return fired
