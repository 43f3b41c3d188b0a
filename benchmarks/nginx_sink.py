"""An OSS-shaped discarding sink: Debian's nginx, configured to answer like OSS and drop bodies.

The sink measures the *client*. Like OSS, it reads each request body whole before it answers:
a front server buffers the body (``proxy_request_buffering on``: in memory up to 1.1 GB,
beyond that in a temp file on tmpfs) and only then asks an answering server on a Unix
socket, which never sees the body (``proxy_pass_request_body off``). (nginx's ``return``
would answer first and discard the body afterwards, which flatters senders that stop at the
answer.) The answers are fixed, valid OSS responses:

* ``PUT /bucket/key`` (PutObject, UploadPart): ``200`` with an ``ETag``;
* ``POST ?uploads`` (InitiateMultipartUpload): ``InitiateMultipartUploadResult`` XML;
* ``POST ?uploadId=`` (CompleteMultipartUpload): ``CompleteMultipartUploadResult`` XML;
* ``GET ?uploadId=`` (ListParts): an empty ``ListPartsResult``; ``GET ?uploads``: an empty
  ``ListMultipartUploadsResult``; ``DELETE``: ``204``; anything else: ``200`` empty.

No ``x-oss-hash-crc64ecma`` header is sent, so clients skip the comparison but still compute
the CRC-64 of what they send (its cost is measured). Signatures are not checked.

The same front also listens with TLS (:attr:`NginxSink.tls_endpoint`; a self-signed
certificate for 127.0.0.1 in :attr:`NginxSink.ca_file`), nginx decrypting.

nginx runs as a non-daemon child process (``master_process off``: the one process is the
worker, so its CPU time is the sink's) with a private prefix in a temp directory, on free
ports of 127.0.0.1. :func:`find_nginx` returns ``None`` when nginx is not installed; callers
skip the sink benchmarks then (``apt-get install nginx-light``).

    with NginxSink() as sink:
        print(sink.endpoint, sink.cpu_seconds())
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["NginxSink", "find_nginx", "nginx_version"]

SINK_ETAG = '"5B3C1D0A2E8F4A6B9C7D0E1F2A3B4C5D"'
UPLOAD_ID = "0004B9894A22E5B1888A1E29F8236E2D"

#: Bodies up to this size are buffered in nginx's memory; larger ones in a temp file on tmpfs.
BODY_BUFFER = "1100m"
#: glibc: never mmap (every buffer comes from the heap) and never give the heap back, so a
#: buffer freed by one request is reused by the next instead of being faulted in afresh
#: (fresh pages cost up to 2 CPU s/GiB in this VM, which made the sink the bottleneck).
_MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

_XML = '<?xml version="1.0" encoding="UTF-8"?>\\n'
_INITIATE = (
    _XML + "<InitiateMultipartUploadResult><Bucket>$oss_bucket</Bucket><Key>$oss_key</Key>"
    f"<UploadId>{UPLOAD_ID}</UploadId></InitiateMultipartUploadResult>"
)
_COMPLETE = (
    _XML + "<CompleteMultipartUploadResult><Location>http://$host/$oss_bucket/$oss_key</Location>"
    "<Bucket>$oss_bucket</Bucket><Key>$oss_key</Key>"
    '<ETag>"3A9F2C7D1E5B4A6C8D0E2F4A6B8C0D2E-1"</ETag></CompleteMultipartUploadResult>'
)
_LIST_PARTS = (
    _XML + "<ListPartsResult><Bucket>$oss_bucket</Bucket><Key>$oss_key</Key>"
    f"<UploadId>{UPLOAD_ID}</UploadId><PartNumberMarker>0</PartNumberMarker>"
    "<NextPartNumberMarker>0</NextPartNumberMarker><MaxParts>1000</MaxParts>"
    "<IsTruncated>false</IsTruncated></ListPartsResult>"
)
_LIST_UPLOADS = (
    _XML + "<ListMultipartUploadsResult><Bucket>$oss_bucket</Bucket><KeyMarker></KeyMarker>"
    "<UploadIdMarker></UploadIdMarker><NextKeyMarker></NextKeyMarker>"
    "<NextUploadIdMarker></NextUploadIdMarker><MaxUploads>1000</MaxUploads>"
    "<IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"
)

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {body_temp};
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    client_body_in_file_only off;
    client_body_buffer_size {body_buffer};
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    default_type application/xml;

    upstream answers {{
        server unix:{prefix}/answers.sock;
        keepalive 64;
        keepalive_requests 10000000;
    }}

    map "$request_method $args" $oss_op {{
        default                                  other;
        "~^POST (.*&)?uploads(=[^&]*)?(&|$)"     initiate;
        "~^POST (.*&)?uploadId="                 complete;
        "~^GET (.*&)?uploadId="                  listparts;
        "~^GET (.*&)?uploads(=[^&]*)?(&|$)"      listuploads;
        "~^PUT "                                 put;
        "~^DELETE "                              delete;
    }}
    map $uri $oss_bucket {{
        default                     "";
        "~^/(?<b>[^/]+)"            $b;
    }}
    map $uri $oss_key {{
        default                     "";
        "~^/[^/]+/(?<k>.+)$"        $k;
    }}

    # The front: reads every request body to its end (request buffering: in memory up to
    # {body_buffer}, beyond that into a temp file on tmpfs) and only then asks the answering server,
    # which never sees the body. So no answer leaves before the last byte has arrived.
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:1m;
        location / {{
            proxy_pass http://answers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_buffering off;
        }}
    }}

    # The answers: fixed, valid OSS responses by operation.
    server {{
        listen unix:{prefix}/answers.sock;
        location / {{
            add_header ETag '{etag}' always;
            add_header x-oss-request-id '5C3D9B7E1A2F4E6D8B0A1C3E' always;
            if ($oss_op = initiate) {{ return 200 '{initiate}'; }}
            if ($oss_op = complete) {{ return 200 '{complete}'; }}
            if ($oss_op = listparts) {{ return 200 '{list_parts}'; }}
            if ($oss_op = listuploads) {{ return 200 '{list_uploads}'; }}
            if ($oss_op = delete) {{ return 204; }}
            return 200 '';
        }}
    }}
}}
"""


def _write_self_signed(folder: Path) -> None:
    """``cert.pem``/``key.pem``: a self-signed certificate for 127.0.0.1 (its own CA)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def find_nginx() -> str | None:
    """The nginx binary (also looked for in the sbin folders a non-root PATH may lack)."""
    found = shutil.which("nginx")
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"):
        candidate = os.path.join(folder, "nginx")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version(binary: str | None = None) -> str | None:
    """``nginx/1.22.1`` (or ``None`` when not installed)."""
    binary = binary or find_nginx()
    if binary is None:
        return None
    proc = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    text = (proc.stderr or proc.stdout).strip()
    return text.split(":", 1)[-1].strip() or None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of ``pid`` (all its threads) from /proc, psutil elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        import psutil

        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


class NginxSink:
    """nginx as an OSS-shaped discarding sink on ``127.0.0.1:<free port>``."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or find_nginx()
        if found is None:
            raise FileNotFoundError(
                "nginx is not installed (Debian: apt-get install nginx-light); the sink "
                "benchmarks need it"
            )
        self.binary = found
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tls_port = 0
        self._body_temp: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the sink is not running"
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """CPU time the sink process has used so far (nginx's only process is the worker)."""
        return _proc_cpu_seconds(self.pid)

    def error_log(self, limit: int = 2000) -> str:
        """The end of nginx's error log (warnings and errors), for a failed run's report."""
        if self._tmp is None:
            return ""
        log = Path(self._tmp.name) / "error.log"
        try:
            return log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    @property
    def tls_endpoint(self) -> str:
        """The same sink over TLS (self-signed for 127.0.0.1: trust :attr:`ca_file`)."""
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> str:
        """PEM of the TLS listener's self-signed certificate (``curl --cacert``, ``verify=``)."""
        assert self._tmp is not None, "the sink is not running"
        return os.path.join(self._tmp.name, "cert.pem")

    def config(self, prefix: str, port: int, tls_port: int, body_temp: str) -> str:
        return _CONFIG.format(
            prefix=prefix, port=port, tls_port=tls_port, body_temp=body_temp,
            body_buffer=BODY_BUFFER, etag=SINK_ETAG,
            initiate=_INITIATE, complete=_COMPLETE, list_parts=_LIST_PARTS,
            list_uploads=_LIST_UPLOADS,
        )

    def start(self) -> NginxSink:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        prefix = self._tmp.name
        _write_self_signed(Path(prefix))
        # Bodies over 1 MiB are buffered in a temp file: on tmpfs when there is one, so the
        # sink measures the network path, not this machine's disk.
        shm = Path("/dev/shm")
        body_temp = (tempfile.mkdtemp(prefix="bench-nginx-body-", dir=shm)
                     if shm.is_dir() and os.access(shm, os.W_OK) else f"{prefix}/body")
        self._body_temp = body_temp
        last_error = ""
        for _ in range(5):
            port, tls_port = _free_port(), _free_port()
            conf = Path(prefix) / "nginx.conf"
            conf.write_text(self.config(prefix, port, tls_port, body_temp))
            proc = subprocess.Popen(
                [self.binary, "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**os.environ, "GLIBC_TUNABLES": _MALLOC_TUNABLES},
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        self._proc, self.port, self.tls_port = proc, port, tls_port
                        return self
                except OSError:
                    time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
            log = Path(prefix) / "error.log"
            last_error = (err or b"").decode(errors="replace") + (
                log.read_text(errors="replace") if log.exists() else ""
            )
            if "Address already in use" not in last_error:
                break
        self._tmp.cleanup()
        self._tmp = None
        raise RuntimeError(f"nginx sink did not start: {last_error.strip()[-2000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish in-flight requests
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._body_temp is not None:
            shutil.rmtree(self._body_temp, ignore_errors=True)
            self._body_temp = None

    def __enter__(self) -> NginxSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":  # run the sink by hand: python -m benchmarks.nginx_sink
    import sys

    # SIGTERM (and SIGINT, ignored in background jobs) stop nginx through the with block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with NginxSink() as sink:
        print(f"nginx OSS sink listening on {sink.endpoint} and {sink.tls_endpoint} "
              f"(CA {sink.ca_file}; pid {sink.pid}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
