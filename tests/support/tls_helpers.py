"""A self-signed certificate for 127.0.0.1, for the HTTPS tests (import as ``tls_helpers``)."""

from __future__ import annotations

import datetime
import ssl

import pytest


def self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    import ipaddress
    import tempfile
    from pathlib import Path

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "cert.pem").write_bytes(cert_pem)
        Path(tmp, "key.pem").write_bytes(key_pem)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(Path(tmp, "cert.pem"), Path(tmp, "key.pem"))
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    return server_ctx, client_ctx


class SniServer:
    """An HTTPS server on 127.0.0.1, reached as ``https://localhost:PORT``, whose TLS
    handshake fails when the client sends no SNI (``require_sni``), as many HTTPS hosts
    behind a CDN, a load balancer or a shared IP do. Answers ``status``/``body`` to every
    request; records the server names handshakes asked for (``None``: no SNI) and the
    requests (path, lower-case headers, body). ``refuse_all``: every handshake fails.
    A context manager."""

    def __init__(self, *, require_sni: bool = True, refuse_all: bool = False,
                 status: int = 200, body: bytes = b'{"Status":"OK"}') -> None:
        import tempfile
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from pathlib import Path

        from oss_callback.testing._tls import write_tls_files

        self.server_names: list[str | None] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        owner = self

        def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
            with owner._lock:
                owner.server_names.append(name)
            if refuse_all or (name is None and require_sni):
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            return None

        with tempfile.TemporaryDirectory() as tmp:
            _, cert, key = write_tls_files(Path(tmp), "localhost")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
        ctx.sni_callback = on_sni

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.requests.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, data))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                # The handshake runs here, in the connection's thread, not in accept().
                # wrap_socket takes the connection over: close the TLS socket here.
                request.settimeout(10)
                with ctx.wrap_socket(request, server_side=True) as tls:
                    super().finish_request(tls, client_address)

            def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
                pass  # failed handshakes are the point

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> SniServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
