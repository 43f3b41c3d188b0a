"""pytest fixtures for the OSS emulator (registered as the ``oss_callback`` plugin).

* ``oss_emulator_session``: one running :class:`OSSEmulator` for the whole session.
* ``oss_emulator``: that emulator, :meth:`~OSSEmulator.reset` before each test (fast: no
  server start per test).
* ``oss_bucket``: the name of a bucket created in ``oss_emulator`` for this test.
* ``callback_receiver``: a running :class:`CallbackReceiver` for this test.

Imports of the emulator's dependencies happen inside the fixtures, so merely having the
plugin installed costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from oss_callback.testing import CallbackReceiver, OSSEmulator

__all__ = ["callback_receiver", "oss_bucket", "oss_emulator", "oss_emulator_session"]


@pytest.fixture(scope="session")
def oss_emulator_session() -> Iterator[OSSEmulator]:
    """A running OSS emulator shared by the whole test session."""
    from oss_callback.testing import OSSEmulator

    with OSSEmulator(callback_timeout=5.0) as emu:
        yield emu


@pytest.fixture
def oss_emulator(oss_emulator_session: OSSEmulator) -> OSSEmulator:
    """The session's OSS emulator, reset (no buckets, objects, faults or records)."""
    oss_emulator_session.reset()
    return oss_emulator_session


@pytest.fixture
def oss_bucket(oss_emulator: OSSEmulator) -> str:
    """A bucket (``"test-bucket"``) in the freshly reset ``oss_emulator``."""
    return oss_emulator.create_bucket("test-bucket")


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    """A real HTTP server on 127.0.0.1 recording callbacks, answering ``{"Status":"OK"}``."""
    from oss_callback.testing import CallbackReceiver

    with CallbackReceiver() as receiver:
        yield receiver
