"""The portal under the sync facade: one event loop in a thread of its own, and the calls on it.

A :class:`Portal` wraps an :class:`anyio.from_thread.BlockingPortal` (on uvloop where it is
installed). :meth:`Portal.call` runs an async function as a task in that loop and blocks the
calling thread until it is done, returning or raising the task's own result or exception.
What makes it safe to use from any thread:

* an interruption of the waiting thread (``KeyboardInterrupt`` from Ctrl-C, or any other
  exception) cancels the task and waits for its cleanup before it propagates, including
  one that lands while the task is still being spawned (it may already be running then);
  a second interruption stops the wait;
* a ``BaseException`` raised by user code on the loop thread (a progress callback's
  ``SystemExit``) is carried to the caller instead of tearing the portal's task group down;
* :meth:`Portal.check` refuses calls after close, after ``os.fork()`` in the child, and
  from the loop thread itself (where they would deadlock);
* :meth:`Portal.close` cancels the calls in flight (they raise ``RuntimeError``), gives
  them :data:`_CLOSE_GRACE` to clean up, runs the owner's ``aclose`` in the loop, and joins
  the loop thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.from_thread

from oss_callback.client._engine import loop_options

__all__ = ["Portal"]

P = ParamSpec("P")
T = TypeVar("T")

#: How long close() lets cancelled in-flight calls clean up before closing the pool anyway
#: (the core bounds its own shielded cleanup well below this).
_CLOSE_GRACE = 60.0


class _Raised:
    """A ``BaseException`` (not cancellation) raised in the loop, carried to the caller.

    Letting ``SystemExit``/``KeyboardInterrupt`` raised by user code on the loop thread (a
    progress callback) escape the task would tear the portal's task group down.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Portal:
    """One event loop in its own thread, the calls in flight on it, and its lifecycle.

    Shared by a :class:`Client` and the buckets it hands out. Attributes named ``_loop_*``
    are touched only on the loop thread; ``_closed`` is guarded by ``_lock``.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False
        self._loop_closing = False
        self._loop_scopes: set[anyio.CancelScope] = set()
        self._loop_idle: anyio.Event | None = None
        self._cm = anyio.from_thread.start_blocking_portal(
            "asyncio", loop_options(), name="oss-callback-portal")
        self._portal = self._cm.__enter__()
        try:
            self.loop_thread: int = self._portal.call(threading.get_ident)
        except BaseException:
            self._stop()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    # -------------------------------------------------------------- checks

    def check(self, method: str) -> None:
        """Refuse a call that can't work: closed, after fork, or from the loop thread."""
        if os.getpid() != self.pid:
            raise RuntimeError(
                f"this {self.owner} was created in process {self.pid} and can't be used after "
                f"os.fork(): create a new {self.owner} in the child process"
            )
        if self._closed:
            raise RuntimeError(
                f"this {self.owner} is closed; create a new one (or keep using it inside its "
                "'with' block)"
            )
        if threading.get_ident() == self.loop_thread:
            raise RuntimeError(
                f"{method}() was called on the {self.owner}'s own event loop thread (from a "
                "progress callback?), where it would deadlock; in async code use "
                "AsyncClient/AsyncBucket and await their methods"
            )

    def _closed_while_running(self, method: str) -> RuntimeError:
        return RuntimeError(
            f"{method}() was cancelled because the {self.owner} was closed while it ran; "
            f"close the {self.owner} only after the calls using it have returned"
        )

    # -------------------------------------------------------------- calls

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run a plain callable on the loop thread (to build objects that belong there)."""
        self.check(getattr(fn, "__name__", "call"))
        return self._portal.call(fn)

    def call(
        self, method: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(*args, **kwargs)`` as a task in the loop; block until it is done.

        The task's result or exception (the very same object) is returned or raised. If this
        thread is interrupted while waiting, the task is cancelled and its cancellation is
        waited for before the interruption propagates.
        """
        self.check(method)
        finished = threading.Event()
        abandoned = threading.Event()
        # The task's scope, once it runs: the task can start before start_task_soon()
        # returns here, so an interruption in that window must still be able to cancel it.
        spawned: list[anyio.CancelScope] = []

        async def run() -> T | _Raised:
            try:
                if self._loop_closing:
                    raise self._closed_while_running(method)
                with anyio.CancelScope() as scope:
                    spawned.append(scope)
                    if abandoned.is_set():
                        # The caller was interrupted while the task was being spawned.
                        return _Raised(RuntimeError(f"{method}() was abandoned"))
                    self._loop_scopes.add(scope)
                    try:
                        return await fn(*args, **kwargs)
                    except Exception:
                        raise
                    except BaseException as exc:
                        if isinstance(exc, anyio.get_cancelled_exc_class()):
                            raise
                        return _Raised(exc)
                    finally:
                        self._loop_scopes.discard(scope)
                        if not self._loop_scopes and self._loop_idle is not None:
                            self._loop_idle.set()
                # Only reached when this scope was cancelled: by close(), or by a caller
                # interrupted while spawning (nobody reads the outcome then).
                if abandoned.is_set():
                    return _Raised(RuntimeError(f"{method}() was abandoned"))
                raise self._closed_while_running(method)
            finally:
                finished.set()

        future: concurrent.futures.Future[T | _Raised] | None = None
        try:
            try:
                future = self._portal.start_task_soon(run, name=f"oss_callback {method}")
            except RuntimeError:
                self.check(method)  # closed by another thread since the check above
                raise
            outcome = future.result()
        except concurrent.futures.CancelledError:
            if future is None or not future.cancelled():
                raise
            # Cancelled by the loop itself: only the portal shutting down does that.
            raise self._closed_while_running(method) from None
        except BaseException:
            if future is None:
                # Interrupted while spawning: the task may already be running (it appends
                # its scope before it looks at `abandoned`, this thread sets `abandoned`
                # before it looks at `spawned`, so one of the two sees the other).
                abandoned.set()
                if spawned:
                    self._portal.call(spawned[0].cancel)
                    finished.wait()
            elif not future.done():
                # Interrupted while waiting (Ctrl-C, an exception from a signal handler):
                # cancel the task and wait until its cleanup is over, so nothing keeps
                # running in the background. A second interruption stops the wait.
                future.cancel()
                finished.wait()
            raise
        if isinstance(outcome, _Raised):
            raise outcome.exc
        return outcome

    # -------------------------------------------------------------- lifecycle

    def close(self, aclose: Callable[[], Awaitable[None]]) -> None:
        """Cancel calls in flight, ``await aclose()`` in the loop, stop the loop thread."""
        if os.getpid() != self.pid:
            # A forked child: the loop thread and its sockets exist only in the parent.
            self._closed = True
            return
        if threading.get_ident() == self.loop_thread and not self._closed:
            raise RuntimeError(
                f"close() was called on the {self.owner}'s own event loop thread, where it "
                "would deadlock; close it from the thread that uses it"
            )
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._portal.call(self._loop_shutdown, aclose)
        finally:
            self._stop()

    def abandon(self) -> None:
        """Stop the loop thread without closing anything in it (failed construction)."""
        with self._lock:
            self._closed = True
        self._stop()

    def _stop(self) -> None:
        self._cm.__exit__(None, None, None)  # stops the portal and joins its thread

    async def _loop_shutdown(self, aclose: Callable[[], Awaitable[None]]) -> None:
        self._loop_closing = True
        if self._loop_scopes:
            self._loop_idle = anyio.Event()
            for scope in list(self._loop_scopes):
                scope.cancel()
            with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                await self._loop_idle.wait()
        await aclose()


