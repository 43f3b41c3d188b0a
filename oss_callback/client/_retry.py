"""Retries as a pure policy: what to retry, and how long to wait before the next attempt."""

from __future__ import annotations

import random

import attrs

from oss_callback.protocol._errors import InconsistentError, OSSError, RequestError, ServiceError

__all__ = ["RetryPolicy"]

#: OSS error codes worth another attempt whatever the status (the V2 SDK's list).
RETRYABLE_CODES = frozenset(
    {"RequestTimeTooSkewed", "BadRequest", "InternalError", "ServiceUnavailable"}
)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    Attempt ``n`` (0-based) that failed waits ``uniform(0, min(max_delay, base_delay * 2**n))``
    before attempt ``n + 1``.  Only requests whose body can be replayed are retried.

    Args:
        max_attempts: total attempts, including the first (1 disables retries).
        base_delay: seconds; the cap of the first backoff.
        max_delay: seconds; no single wait is longer.
        wait: ``False`` removes the sleeps (for tests); the decisions stay the same.
    """

    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=20.0, validator=attrs.validators.ge(0))
    wait: bool = True

    @classmethod
    def no_wait(cls, max_attempts: int = 3) -> RetryPolicy:
        """The same decisions without any sleeping: for tests."""
        return cls(max_attempts=max_attempts, wait=False)

    def is_retryable(self, error: BaseException) -> bool:
        """Whether a failed attempt that raised ``error`` may be tried again.

        Retried: no answer at all (:class:`RequestError`), HTTP 5xx, 408 and 429, the codes in
        ``RETRYABLE_CODES``, and a CRC-64 mismatch.  Never retried: anything else from OSS
        (4xx), a :class:`CallbackError` (the object is stored), and cancellation.
        """
        if not isinstance(error, OSSError):
            return False
        if isinstance(error, RequestError | InconsistentError):
            return True
        if isinstance(error, ServiceError):
            if error.status == 203:
                return False
            return (
                error.status >= 500
                or error.status in (408, 429)
                or error.code in RETRYABLE_CODES
            )
        return False

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """``is_retryable(error)`` and attempts remain after attempt ``attempt`` (0-based)."""
        return attempt + 1 < self.max_attempts and self.is_retryable(error)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based); 0 when ``wait=False``."""
        if not self.wait:
            return 0.0
        cap = min(self.max_delay, self.base_delay * (2 ** min(attempt, 30)))
        return random.uniform(0, cap)
