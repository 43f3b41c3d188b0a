"""OSSEmulator, the public face of the emulator: its settings, lifecycle, credentials, and
what tests inspect (records, objects, uploads). Serving is ``_server``'s part; answering
requests ``_app``'s."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import anyio.to_thread

from oss_callback.testing._app import EmulatorApp
from oss_callback.testing._auth import CredentialStore
from oss_callback.testing._callbacks import public_key_pem
from oss_callback.testing._faults import FaultInjector
from oss_callback.testing._records import CallbackRecord, RequestRecord, StsCredentials
from oss_callback.testing._routing import PUBLIC_KEY_PATH
from oss_callback.testing._server import ServerThread
from oss_callback.testing._state import ETAG_MODES, EmulatorState
from oss_callback.testing._store import Store
from oss_callback.testing._stored import StoredObject

__all__ = ["DEFAULT_ACCESS_KEY_ID", "DEFAULT_ACCESS_KEY_SECRET", "OSSEmulator"]

#: The access key every emulator accepts unless told otherwise (test values, not secrets).
DEFAULT_ACCESS_KEY_ID = "LTAI-oss-emulator"
DEFAULT_ACCESS_KEY_SECRET = "oss-emulator-secret"  # noqa: S105 - a well-known test value

#: OSS's bucket names (always checked with fullmatch: "$" matches before a final newline).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _check_bucket_name(name: str) -> str:
    if not isinstance(name, str) or not _BUCKET_NAME.fullmatch(name):
        raise ValueError(
            f"invalid bucket name {name!r}: 3-63 characters, lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    return name


class OSSEmulator:
    """A local Alibaba Cloud OSS: a real HTTP server on 127.0.0.1 speaking OSS's protocol.

    It authenticates V1/V4 (and STS) requests strictly, stores objects on disk (streamed,
    with MD5 and CRC-64 computed on the fly), runs multipart uploads, and performs upload
    callbacks exactly as OSS does (signed with its own RSA key, :attr:`public_key_pem`).
    Tests can inject faults (:attr:`faults`) and inspect what it saw (:attr:`requests`,
    :attr:`callbacks`).

    Use it as a context manager, sync or async (the server always runs on a background
    thread with its own event loop, so it never blocks the caller's loop)::

        with OSSEmulator(buckets=["examplebucket"]) as emu:
            client = Client(endpoint=emu.endpoint, region=emu.region,
                            access_key_id=emu.access_key_id,
                            access_key_secret=emu.access_key_secret)

    Args:
        host: Interface to listen on.
        port: Port; 0 picks a free one (see :attr:`port`/:attr:`endpoint`).
        data_dir: Where objects are stored; ``None`` for a temporary directory that is
            removed on stop.  An existing directory is reused (objects survive restarts).
        region: The region V4 signatures must be scoped to.
        access_key_id: The accepted access key id.
        access_key_secret: Its secret (never shown in a repr or a log line).
        buckets: Buckets to create at start (and again after :meth:`reset`).
        callback_timeout: Seconds each callback URL gets (OSS: a fixed 5 s).
        max_records: How many request/callback records to keep.
        etag: How ETags are computed.  ``"md5"`` (the default) is faithful to OSS: a
            PutObject/UploadPart ETag is the upper-case hex MD5 of the content, a multipart
            ETag the MD5 of the parts' MD5s plus ``-N``.  ``"fast"`` is an opt-in for
            throughput benchmarks: the MD5 (the slowest step of ingest, ~600 MiB/s) is
            skipped unless the client sends ``Content-MD5`` (which is then still verified,
            and the ETag is that MD5); otherwise the ETag is 32 upper-case hex digits made
            of the CRC-64 and the size (``f"{crc64:016X}{size:016X}"``): unique per content
            in practice, but *not* an MD5, and no ``Content-MD5`` response header is sent.
            Multipart ETags are derived the same way from those part digests.  CRC-64
            (``x-oss-hash-crc64ecma``) is exact in both modes.
        tls: serve HTTPS (:attr:`endpoint` is then ``https://...``) with a certificate for
            ``host`` issued by a private CA made up at start: trust it with
            :attr:`ca_file` / :attr:`ca_pem` (``SSL_CERT_FILE``, ``curl --cacert``,
            ``ssl.create_default_context(cafile=emu.ca_file)``), as you would a company's
            own CA. Clients that don't trust it fail certificate verification.
        header_timeout: seconds a connection gets to deliver a complete request head,
            counted from when it opens or its previous response completed: a client that
            connects and says nothing, or drips its head a byte at a time (slowloris), is
            disconnected then (uvicorn alone would wait for ever). Idle kept-alive
            connections are closed after 30 s, or this if shorter. (With ``tls=True`` the
            TLS handshake before it has the event loop's own 60 s limit.)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        region: str = "cn-hangzhou",
        access_key_id: str = DEFAULT_ACCESS_KEY_ID,
        access_key_secret: str = DEFAULT_ACCESS_KEY_SECRET,
        buckets: Iterable[str] = (),
        callback_timeout: float = 5.0,
        max_records: int = 100_000,
        etag: str = "md5",
        tls: bool = False,
        header_timeout: float = 30.0,
    ) -> None:
        if etag not in ETAG_MODES:
            raise ValueError(f"etag must be one of {ETAG_MODES}, not {etag!r}")
        if not access_key_id or not access_key_secret:
            raise ValueError("access_key_id and access_key_secret must be non-empty")
        if callback_timeout <= 0:
            raise ValueError("callback_timeout must be > 0")
        if not header_timeout > 0:
            raise ValueError("header_timeout must be > 0")
        for name in buckets:
            _check_bucket_name(name)
        self.header_timeout = float(header_timeout)
        self.host = host
        self._requested_port = port
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self.region = region
        self.access_key_id = access_key_id
        self._access_key_secret = access_key_secret
        self._initial_buckets = tuple(buckets)
        self._callback_timeout = callback_timeout
        self._initial_callback_timeout = callback_timeout
        self._max_records = max_records
        self.etag = etag
        self.tls = tls
        self.faults = FaultInjector()
        self._credentials = CredentialStore()
        self._credentials.add(access_key_id, access_key_secret)
        self._service: EmulatorState | None = None
        self._server: ServerThread | None = None
        self._temp_dir: str | None = None
        self._data_dir: Path | None = None
        self._port = 0
        self._lock = threading.Lock()
        self._state = "unopened"

    # ------------------------------------------------------------------ properties

    @property
    def access_key_secret(self) -> str:
        """The secret of :attr:`access_key_id`."""
        return self._access_key_secret

    @property
    def port(self) -> int:
        """The port listened on (the real one when constructed with ``port=0``)."""
        self._require_running()
        return self._port

    @property
    def endpoint(self) -> str:
        """``http://HOST:PORT`` (``https://`` with ``tls=True``): pass it to a client (with
        ``region=emu.region`` for V4)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        """With ``tls=True``: the PEM certificate of the private CA that issued the server's.

        Raises:
            RuntimeError: without ``tls=True``, or before :meth:`start`.
        """
        self._require_running()
        if self._server is None or self._server.ca_pem is None:
            raise RuntimeError("this OSSEmulator serves plain HTTP; create it with tls=True")
        return self._server.ca_pem

    @property
    def ca_file(self) -> Path:
        """:attr:`ca_pem` in a file (removed on :meth:`stop`): ``SSL_CERT_FILE``,
        ``curl --cacert``, ``verify=ssl.create_default_context(cafile=...)``."""
        self.ca_pem  # noqa: B018 - raises without TLS
        assert self._server is not None and self._server.tls_dir is not None
        return Path(self._server.tls_dir) / "ca.pem"

    @property
    def data_dir(self) -> Path:
        """The directory objects are stored in."""
        self._require_running()
        assert self._data_dir is not None
        return self._data_dir

    @property
    def public_key_pem(self) -> bytes:
        """The PEM public key callbacks are signed with (pin it in a CallbackVerifier)."""
        return public_key_pem()

    @property
    def public_key_url(self) -> str:
        """Where the emulator serves :attr:`public_key_pem` (sent as ``x-oss-pub-key-url``)."""
        return self.endpoint + PUBLIC_KEY_PATH

    @property
    def callback_timeout(self) -> float:
        """Seconds each callback URL gets before the attempt counts as failed."""
        return self._callback_timeout

    @callback_timeout.setter
    def callback_timeout(self, value: float) -> None:
        if value <= 0:
            raise ValueError("callback_timeout must be > 0")
        self._callback_timeout = value
        if self._service is not None:
            self._service.callback_timeout = value

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests answered so far, oldest first (a snapshot)."""
        service = self._require_running()
        with service.records_lock:
            return list(service.requests)

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """The callback POSTs attempted so far, oldest first (a snapshot)."""
        service = self._require_running()
        with service.records_lock:
            return list(service.callbacks)

    def __repr__(self) -> str:
        where = self.endpoint if self._state == "running" else self._state
        return f"OSSEmulator({where}, region={self.region!r}, access_key_id={self.access_key_id!r})"

    # ------------------------------------------------------------------ lifecycle

    def _require_running(self) -> EmulatorState:
        if self._state != "running" or self._service is None:
            raise RuntimeError(f"the OSSEmulator is not running ({self._state})")
        return self._service

    def start(self) -> OSSEmulator:
        """Start serving (blocks until the socket accepts connections).

        Raises:
            RuntimeError: if it was already started (an emulator runs once).
        """
        with self._lock:
            if self._state != "unopened":
                raise RuntimeError(f"the OSSEmulator cannot be started again ({self._state})")
            self._state = "starting"
        try:
            if self._data_dir_arg is None:
                self._temp_dir = tempfile.mkdtemp(prefix="oss-emulator-")
                self._data_dir = Path(self._temp_dir)
            else:
                self._data_dir = self._data_dir_arg.resolve()
            store = Store(self._data_dir)
            self._service = EmulatorState(
                store,
                region=self.region,
                credentials=self._credentials,
                callback_timeout=self._callback_timeout,
                max_records=self._max_records,
                etag=self.etag,
            )
            for name in self._initial_buckets:
                store.create_bucket(name)
            self._server = ServerThread(
                EmulatorApp(self._service, self.faults),
                host=self.host,
                port=self._requested_port,
                tls=self.tls,
                header_timeout=self.header_timeout,
            )
            self._port = self._server.bind()
            host = f"[{self.host}]" if ":" in self.host else self.host
            self._service.endpoint = f"{'https' if self.tls else 'http'}://{host}:{self._port}"
            self._server.start()
        except BaseException:
            self._state = "running"  # let stop() clean up what was made
            self.stop()
            raise
        self._state = "running"
        return self

    def stop(self) -> None:
        """Stop serving, wait for the server thread, and remove a temporary data dir.

        Idempotent.
        """
        with self._lock:
            if self._state in ("stopped", "unopened"):
                self._state = "stopped"
                return
            self._state = "stopping"
        if self._server is not None:
            self._server.stop()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        elif self._service is not None:
            self._service.store.drop_spares()  # a data dir that stays: no dead bytes left in it
        self._state = "stopped"

    def __enter__(self) -> OSSEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> OSSEmulator:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    # ------------------------------------------------------------------ state

    def create_bucket(self, name: str) -> str:
        """Create a bucket (no error if it exists). Returns the name.

        Raises:
            ValueError: for a name OSS would reject (3-63 of ``a-z0-9-``, no edge hyphen).
        """
        service = self._require_running()
        service.store.create_bucket(_check_bucket_name(name))
        return name

    def add_credentials(
        self, access_key_id: str, access_key_secret: str, security_token: str | None = None,
        *, expiration: datetime | None = None,
    ) -> None:
        """Accept another access key; with ``security_token`` it is an STS key, and every
        request signed with it must carry that token (``x-oss-security-token``). After
        ``expiration`` (a timezone-aware datetime; ``None``: never) requests signed with it
        get ``403 SecurityTokenExpired``, as from OSS."""
        if expiration is not None and expiration.utcoffset() is None:
            raise ValueError("expiration must be a timezone-aware datetime")
        self._credentials.add(
            access_key_id, access_key_secret, security_token,
            expires_at=None if expiration is None else expiration.timestamp(),
        )

    def remove_credentials(self, access_key_id: str) -> None:
        """Stop accepting an access key (a revoked key: ``403 InvalidAccessKeyId``)."""
        self._credentials.remove(access_key_id)

    def expire_credentials(self, access_key_id: str) -> None:
        """Make an accepted access key (an STS token) expire now: requests signed with it
        get ``403 SecurityTokenExpired``.

        Raises:
            KeyError: the key is not accepted.
        """
        self._credentials.expire(access_key_id)

    def issue_sts_token(self, expires_in: float | None = 3600) -> StsCredentials:
        """Make up a temporary access key and security token, and accept them.

        Args:
            expires_in: seconds until they expire (OSS then answers ``403
                SecurityTokenExpired``), as an STS ``AssumeRole`` would give; ``None``:
                never. (STS itself allows 900 s to 12 h; any lifetime >= 0 is accepted.)

        Returns:
            The credentials (with their ``expiration``); unpack as
            ``ak, secret, token = emu.issue_sts_token()``.
        """
        if expires_in is not None and not expires_in >= 0:
            raise ValueError(f"expires_in must be >= 0 seconds or None, got {expires_in!r}")
        expiration = (None if expires_in is None
                      else datetime.fromtimestamp(time.time() + expires_in, timezone.utc))
        creds = StsCredentials(
            access_key_id="STS." + secrets.token_hex(10),
            access_key_secret=secrets.token_urlsafe(24),
            security_token="CAIS" + secrets.token_urlsafe(96),
            expiration=expiration,
        )
        self.add_credentials(creds.access_key_id, creds.access_key_secret, creds.security_token,
                             expiration=expiration)
        return creds

    def reset(self) -> None:
        """Forget everything a test did: objects, uploads, buckets (the constructor's are
        re-created), faults, records, extra credentials, and the callback timeout."""
        service = self._require_running()
        service.store.reset()
        for name in self._initial_buckets:
            service.store.create_bucket(name)
        self.faults.clear()
        service.clear_records()
        self._credentials.clear()
        self._credentials.add(self.access_key_id, self._access_key_secret)
        self.callback_timeout = self._initial_callback_timeout

    def clear_records(self) -> None:
        """Forget the recorded requests and callbacks."""
        self._require_running().clear_records()

    # ------------------------------------------------------------------ inspection

    def head_object(self, bucket: str, key: str) -> StoredObject | None:
        """The stored object's metadata (size, etag, crc64, ...), or ``None``."""
        return self._require_running().store.get(bucket, key)

    def get_object(self, bucket: str, key: str) -> bytes:
        """The stored object's bytes (for small test objects).

        Raises:
            KeyError: if there is no such object.
        """
        service = self._require_running()
        obj = service.store.get(bucket, key)
        if obj is None:
            raise KeyError(f"{bucket}/{key}")
        return b"".join(service.store.read(obj))

    def object_path(self, bucket: str, key: str) -> Path | None:
        """Where the object's bytes are on disk (always inside :attr:`data_dir`), or ``None``.

        A completed multipart object is kept as its parts' files; the first call assembles
        them into one file (a copy, deleted with the object).
        """
        service = self._require_running()
        obj = service.store.get(bucket, key)
        return None if obj is None else service.store.materialize(obj)

    def list_keys(self, bucket: str) -> list[str]:
        """Every key in the bucket, sorted."""
        return self._require_running().store.sorted_keys(bucket)

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists."""
        return self._require_running().store.bucket_exists(bucket)

    def list_uploads(self, bucket: str | None = None) -> list[str]:
        """Upload ids of multipart uploads in progress (in ``bucket``, or anywhere)."""
        uploads = list(self._require_running().store.uploads.values())
        return [u.upload_id for u in uploads if bucket is None or u.bucket == bucket]
