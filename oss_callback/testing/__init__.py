"""A local Alibaba Cloud OSS emulator for tests, demos and benchmarks.

``OSSEmulator`` runs a real HTTP server on 127.0.0.1 that speaks OSS's protocol: strict
V1/V4/STS authentication, streamed on-disk objects with MD5/CRC-64, multipart uploads,
browser form uploads (PostObject, with a signed POST policy), and upload callbacks signed
with its own RSA key.  Tests steer it with fault rules
(``emu.faults.add(...)``) and inspect what it saw (``emu.requests``, ``emu.callbacks``).

The pytest plugin (installed with the package) provides the fixtures ``oss_emulator``
(a running emulator, reset for each test), ``oss_bucket`` (a fresh bucket name in it) and
``callback_receiver`` (a recording HTTP server to point callbacks at).

Example:
    >>> from oss_callback.testing import OSSEmulator
    >>> with OSSEmulator(buckets=["examplebucket"]) as emu:
    ...     emu.endpoint, emu.region, emu.access_key_id
"""

from oss_callback.testing._asgi import ServeASGI
from oss_callback.testing._emulator import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    OSSEmulator,
)
from oss_callback.testing._faults import Fault, FaultInjector
from oss_callback.testing._receiver import CallbackReceiver, ReceivedCallback
from oss_callback.testing._records import CallbackRecord, RequestRecord, StsCredentials
from oss_callback.testing._stored import StoredObject

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_ACCESS_KEY_SECRET",
    "CallbackReceiver",
    "CallbackRecord",
    "Fault",
    "FaultInjector",
    "OSSEmulator",
    "ReceivedCallback",
    "RequestRecord",
    "ServeASGI",
    "StoredObject",
    "StsCredentials",
]
