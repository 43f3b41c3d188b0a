"""``oss-callback callback-test URL``: send your callback server the POST OSS would send,
and say what OSS would answer the uploader.

The callback goes through the emulator's own sender (:mod:`oss_callback.testing._callback_send`):
the ``x-oss-callback`` header an upload with this :class:`~oss_callback.Callback` carries is
parsed and checked as OSS does, the body template is filled in with the system variables of
a made-up upload, the POST is signed MD5withRSA, and it is judged by OSS's rules: 5 s for
all of it, no retry, ``200`` only, a JSON body of at most 1 MB. The outcome is OSS's
answer to the upload: ``200`` with the server's body, or ``203 CallbackFailed`` with OSS's
message, plus what to change.

The public key: OSS signs with a key at ``gosspublic.alicdn.com``; this command can't, so it
signs with a test key and serves the public half at
``http://127.0.0.1:PORT/_emulator/callback_pub_key.pem`` (the emulator's key path) while
the test runs; ``x-oss-pub-key-url`` points there. A server whose verifier trusts it
(``CallbackVerifier(allowed_key_hosts=("127.0.0.1:PORT",))``, ``oss-callback
callback-server --trust-emulator http://127.0.0.1:PORT``; ``--key-port`` fixes the port)
fetches it as it would OSS's; or pin it: ``--key-file`` keeps the key across runs and
``--print-key`` prints its public half for ``CallbackVerifier(public_key=...)``.

Exit codes: 0 OSS would answer 200, 3 it would answer 203 (the object stored, the callback
failed), 2 bad input (or ``cryptography`` missing).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from oss_callback.cli._common import EXIT_CALLBACK_FAILED, EXIT_OK, UsageError, pairs, parse_size
from oss_callback.protocol._callback import FORM_BODY_TYPE, JSON_BODY_TYPE, Callback
from oss_callback.protocol._options import guess_content_type

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from oss_callback.testing._callback_send import CallbackOutcome
    from oss_callback.testing._callbacks import CallbackConfig

__all__ = ["OSS_CALLBACK_TIMEOUT", "add_parser", "run_callback_test"]

#: What OSS gives a callback server for the whole POST, fixed (PROTOCOL.md §1.3).
OSS_CALLBACK_TIMEOUT = 5.0
#: Where the public key is served: the emulator's key path, so a server that trusts an
#: emulator (``callback-server --trust-emulator http://127.0.0.1:PORT``) trusts it too.
KEY_PATH = "/_emulator/callback_pub_key.pem"
DEFAULT_FORM_BODY = "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&crc64=${crc64}"
DEFAULT_JSON_BODY = '{"bucket":${bucket},"object":${object},"etag":${etag},"size":${size}}'
_SHOWN = 500  # characters of a body shown in the text report
_EXTRA = "pip install 'oss-callback[emulator]' (or 'oss-callback[server]')"


def add_parser(sub: Any) -> None:
    """Register ``callback-test`` on the ``oss-callback`` subcommands."""
    p = sub.add_parser(
        "callback-test",
        help="send your callback server the signed POST OSS would, and show OSS's verdict",
        description="Send URL the callback POST OSS would send after an upload (a made-up "
        "one: --bucket, --object, --size), signed with a test key served on 127.0.0.1 while "
        "the test runs, and judge the answer by OSS's rules (5 s, HTTP 200, JSON, at most "
        "1 MB). Prints what OSS would answer the uploader: 200 with your server's body, or "
        "203 CallbackFailed with OSS's reason and how to fix it. Exit code 0 for 200, 3 for "
        "203, 2 for bad input.",
    )
    p.add_argument("url", metavar="URL", nargs="?",
                   help="the callback URL (up to 5, separated by ';', tried in order)")
    p.add_argument("--body", metavar="TEMPLATE",
                   help="body template (default: bucket, object, etag, size, crc64)")
    p.add_argument("--body-type", choices=("form", "json"), default="form")
    p.add_argument("--var", action="append", metavar="x:NAME=V",
                   help="custom callback variable (repeatable)")
    p.add_argument("--query", action="append", metavar="K=V",
                   help="query parameter for the callback URL (repeatable)")
    p.add_argument("--host", help="Host header of the callback request (callbackHost)")
    p.add_argument("--no-sni", action="store_true",
                   help="no SNI for https URLs, as Callback(sni=False) (default: SNI on "
                   "for https, as Callback())")
    p.add_argument("--bucket", default="examplebucket", help="the made-up upload's bucket")
    p.add_argument("--object", default="callback-test/example.txt", metavar="KEY",
                   help="the made-up upload's key")
    p.add_argument("--size", type=parse_size, default=1024, metavar="N",
                   help="the made-up upload's size in bytes")
    p.add_argument("--etag", help="${etag} (default: made up)")
    p.add_argument("--crc64", type=int, metavar="N", help="${crc64} (default: made up)")
    p.add_argument("--key-file", metavar="PATH",
                   help="sign with the RSA key in PATH (made if missing), so a server can "
                   "pin it (default: a new key each run)")
    p.add_argument("--key-port", type=int, default=0, metavar="PORT",
                   help="serve the public key on 127.0.0.1:PORT during the test "
                   "(default: a free port)")
    p.add_argument("--print-key", action="store_true",
                   help="print the public key PEM of --key-file and exit")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run_callback_test(args: argparse.Namespace) -> int:
    """Run ``oss-callback callback-test`` (``UsageError``: exit code 2)."""
    try:
        from oss_callback.testing import _callback_send
        from oss_callback.testing import _callbacks as sender
        from oss_callback.testing._errors import OSSErrorResponse
    except ImportError as e:  # cryptography: the emulator's RSA signing
        raise UsageError(
            f"callback-test signs callbacks as OSS does, which needs "
            f"{e.name or 'cryptography'}: {_EXTRA}"
        ) from None
    if args.print_key:
        if not args.key_file:
            raise UsageError("--print-key needs --key-file (otherwise each run signs with a "
                             "new key, and a printed one would be useless)")
        public = sender.public_key_pem(_load_key(args.key_file)).decode()
        if args.json:
            print(json.dumps({"ok": True, "exit_code": EXIT_OK, "public_key": public}))
        else:
            sys.stdout.write(public)
        return EXIT_OK
    if not args.url:
        raise UsageError("give the callback URL to test, e.g. "
                         "oss-callback callback-test https://app.example.com/oss-callback")
    if not 0 <= args.key_port <= 65535:
        raise UsageError(f"--key-port {args.key_port} is not a port (0-65535; 0: a free one)")
    if args.size < 0:
        raise UsageError("--size must be >= 0")
    if args.crc64 is not None and not 0 <= args.crc64 < 2**64:
        raise UsageError("--crc64 must be an unsigned 64-bit number")
    json_type = args.body_type == "json"
    try:
        callback = Callback(
            args.url,
            query=pairs(args.query, "--query"),
            body=args.body or (DEFAULT_JSON_BODY if json_type else DEFAULT_FORM_BODY),
            body_type=JSON_BODY_TYPE if json_type else FORM_BODY_TYPE,
            host=args.host,
            sni=False if args.no_sni else None,
            variables=pairs(args.var, "--var"),
        )
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    headers = callback.to_headers()
    try:  # what OSS does with the upload's x-oss-callback header, before storing anything
        config = sender.parse_callback(
            headers["x-oss-callback"], headers.get("x-oss-callback-var"), None, None
        )
    except OSSErrorResponse as e:  # pragma: no cover - Callback refuses these first
        raise UsageError(f"OSS would refuse the upload (400 InvalidArgument): {e}") from None
    assert config is not None
    key = _load_key(args.key_file) if args.key_file else sender.callback_signing_key()
    system = _made_up_upload(args, sender)
    body = sender.render_body(config, system)
    pem = sender.public_key_pem(key)
    try:
        key_server = _KeyServer(pem, args.key_port)
    except OSError as e:
        raise UsageError(f"can't serve the public key on 127.0.0.1:{args.key_port}: {e}") from None
    with key_server:
        outcomes = _send(_callback_send, config, body, key_server.url, key)
    report = _report(callback, config, system, body, outcomes, key_server, pem, args)
    code = EXIT_OK if report["ok"] else EXIT_CALLBACK_FAILED
    if args.json:
        if not report["ok"]:  # as every command's --json document: ok false, then an error
            report["error"] = report["uploader"]["message"]
        print(json.dumps({**report, "exit_code": code}, ensure_ascii=False))
    else:
        _print_report(report)
    return code


# --------------------------------------------------------------------------- pieces


def _load_key(path: str) -> rsa.RSAPrivateKey:
    """The RSA private key in ``path``; a new 2048-bit one is written there (0600) if the
    file doesn't exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    file = Path(path)
    if not file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        except OSError as e:
            raise UsageError(f"--key-file {path}: can't create it: {e}") from None
        return key
    try:
        loaded = serialization.load_pem_private_key(file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"--key-file {path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise UsageError(f"--key-file {path}: not an RSA key (OSS signs with RSA)")
    return loaded


def _made_up_upload(args: argparse.Namespace, sender: Any) -> dict[str, str]:
    """The system variables of the made-up upload (stable for the same bucket/key/size)."""
    seed = f"oss-callback callback-test {args.bucket}/{args.object} {args.size}".encode()
    md5 = hashlib.md5(seed, usedforsecurity=False).digest()
    crc64 = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")
    system: dict[str, str] = sender.system_variables(
        bucket=args.bucket,
        key=args.object,
        etag=args.etag or md5.hex().upper(),
        size=args.size,
        mime_type=guess_content_type(args.object) or "application/octet-stream",
        crc64=args.crc64 if args.crc64 is not None else crc64,
        content_md5=base64.b64encode(md5).decode() if not args.etag else "",
        operation="PutObject",
        request_id=os.urandom(12).hex().upper(),
        client_ip="127.0.0.1",
    )
    return system


class _KeyServer:
    """Serves the public key PEM on 127.0.0.1 while the test runs; counts the fetches."""

    def __init__(self, pem: bytes, port: int) -> None:
        owner = self
        self.fetches = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path.split("?", 1)[0] == KEY_PATH
                if found:
                    with owner._lock:
                        owner.fetches += 1
                body = pem if found else b"not found\n"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/x-pem-file" if found else
                                 "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{KEY_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _KeyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _send(sender: Any, config: CallbackConfig, body: bytes, key_url: str,
          key: rsa.RSAPrivateKey) -> list[CallbackOutcome]:
    import anyio

    from oss_callback.client._engine import loop_options

    async def send() -> list[CallbackOutcome]:
        async with sender.callback_client() as client:
            outcomes: list[CallbackOutcome] = await sender.send_callback(
                client, config, body, key_url, OSS_CALLBACK_TIMEOUT, key=key
            )
            return outcomes

    # The sender times attempts with asyncio (it is the emulator's, which runs on asyncio).
    return anyio.run(send, backend="asyncio", backend_options=loop_options())


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def hint_for(outcome: CallbackOutcome, config: CallbackConfig, trust: str) -> str | None:
    """One line on how to fix a failed attempt (``None``: it succeeded)."""
    failure = outcome.failure
    if failure is None:
        return None
    if failure == "timeout":
        return ("answer within 5 s (OSS's fixed limit; it never retries): reply 200 first and "
                "do slow work afterwards (a queue or a background task), and cache OSS's "
                "public key instead of fetching it for every callback")
    if failure == "tls":
        if urlsplit(outcome.url).scheme == "https" and not config.sni:
            return ("the server needs SNI: upload with Callback(sni=True), or leave sni at its "
                    "default (on for https URLs; this test ran with --no-sni); or make the "
                    "server complete handshakes that name no server")
        return ("fix the server's TLS: it must complete a handshake for this host name (is it "
                "HTTPS on that port, with a certificate for the name?)")
    if failure == "not_tls":
        return ("the server at that port answers plain HTTP, not TLS: use an http:// URL, or "
                "the port where the server serves HTTPS")
    if failure == "connect":
        return ("check the scheme, host and port and that the server is listening; OSS calls "
                "from the internet, so the URL must be reachable from there over IPv4 (a "
                "localhost or private address works only in this test)")
    if failure == "too_long":
        return ("keep the answer under 1 MB: OSS hands it to the uploader (answer an id or a "
                "status, not the data)")
    if failure == "not_json":
        if (outcome.response_body or b"").startswith(b"\xef\xbb\xbf"):
            return "drop the UTF-8 BOM at the start of the answer: OSS doesn't take it as JSON"
        return ('answer a JSON body, e.g. {"Status":"OK"} with Content-Type: application/json '
                "(an empty body is not JSON either)")
    status = outcome.status or 0
    if 200 <= status < 300:
        return (f"answer exactly 200 (OSS counts {status} as a failure), with a JSON body")
    if 300 <= status < 400:
        return ("OSS doesn't follow redirects: use the URL the server redirects to (https://, "
                "the trailing slash, the final host)")
    if status in (404, 405):
        return (f"the server has no POST handler at {urlsplit(outcome.url).path or '/'}: "
                "check the path")
    if 400 <= status < 500:
        return ("your server refused the callback: if it verifies the signature, let it trust "
                f"this test's key ({trust}); if it confirms the object in your bucket, the "
                "made-up one isn't there: pass --bucket/--object/--size/--etag of a stored one")
    return f"your server failed (HTTP {status}): see its log"


def _report(callback: Callback, config: CallbackConfig, system: Mapping[str, str], body: bytes,
            outcomes: Sequence[CallbackOutcome], key_server: _KeyServer, pem: bytes,
            args: argparse.Namespace) -> dict[str, Any]:
    trust = f'CallbackVerifier(allowed_key_hosts=("127.0.0.1:{key_server.port}",))'
    last = outcomes[-1]
    ok = last.error is None
    uploader: dict[str, Any]
    if ok:
        uploader = {"status": 200, "content_type": "application/json",
                    "body": _text(last.response_body)}
    else:
        uploader = {"status": 203, "code": "CallbackFailed", "message": last.error}
    return {
        "ok": ok,
        "oss_status": 200 if ok else 203,
        "reason": last.failure,
        "hint": hint_for(last, config, trust),
        "uploader": uploader,
        "request": {
            "urls": list(config.urls),
            "callback_sni": config.sni,
            "host": config.host,
            "body_type": config.body_type,
            "body": _text(body),
            "headers": dict(last.headers),
            "variables": dict(system),
            "x_oss_callback": callback.to_headers(),
        },
        "attempts": [
            {
                "url": o.url,
                "sni": o.sni,
                "status": o.status,
                "response_body": _text(o.response_body),
                "elapsed_ms": round(o.elapsed * 1000),
                "error": o.error,
                "reason": o.failure,
                "detail": o.detail,
                "hint": hint_for(o, config, trust),
            }
            for o in outcomes
        ],
        "public_key": {
            "url": key_server.url,
            "port": key_server.port,
            "fetches": key_server.fetches,
            "key_file": args.key_file,
            "pem": pem.decode(),
            "trust": trust,
        },
        "timeout_seconds": OSS_CALLBACK_TIMEOUT,
    }


def _shorten(text: str | None) -> str:
    if text is None:
        return "(none)"
    one = text if len(text) <= _SHOWN else text[:_SHOWN] + f"... ({len(text)} characters)"
    return one.replace("\n", "\\n")


def _print_report(report: Mapping[str, Any]) -> None:
    req, key = report["request"], report["public_key"]
    variables = req["variables"]
    print(f"POST {' ; '.join(req['urls'])}: the callback OSS sends after storing "
          f"oss://{variables['bucket']}/{variables['object']} ({variables['size']} bytes, "
          "a made-up upload)")
    print(f"  Content-Type: {req['body_type']}; callbackSNI: "
          f"{'true' if req['callback_sni'] else 'false'}"
          + (f"; Host: {req['host']}" if req["host"] else ""))
    print(f"  body: {_shorten(req['body'])}")
    fetched = f"fetched {key['fetches']} time(s)" if key["fetches"] else "not fetched"
    source = f"the key in {key['key_file']}" if key["key_file"] else "a new test key"
    print(f"  signed with {source}; its public key was served at {key['url']} during the "
          f"test ({fetched}): trust it with {key['trust']} (oss-callback callback-server: "
          f"--trust-emulator http://127.0.0.1:{key['port']})"
          + (", or pin it with public_key= (--print-key)" if key["key_file"] else
             " (--key-port fixes the port; --key-file keeps the key for public_key=)"))
    for i, attempt in enumerate(report["attempts"], 1):
        took = f"{attempt['elapsed_ms']} ms"
        if attempt["status"] is not None:
            line = (f"HTTP {attempt['status']} in {took}: "
                    f"{_shorten(attempt['response_body'])}")
        elif attempt["reason"] == "timeout":
            line = f"no answer within {report['timeout_seconds']:g} s"
        else:
            line = f"no connection after {took}: {attempt['detail'] or 'failed'}"
        prefix = f"attempt {i} ({attempt['url']})" if len(report["attempts"]) > 1 else "server"
        print(f"{prefix}: {line}")
        if attempt["error"] and attempt is not report["attempts"][-1]:
            print(f"  failed: {attempt['error']}; OSS tries the next URL")
    uploader = report["uploader"]
    if report["ok"]:
        print(f"OSS would answer the upload: 200, with your server's body: "
              f"{_shorten(uploader['body'])}")
        print("  (the uploader gets it as PutObjectResult.callback_body)")
        return
    print(f"OSS would answer the upload: 203 CallbackFailed: {uploader['message']}")
    print("  (the object is stored all the same; the SDK raises CallbackError)")
    print(f"fix: {report['hint']}")
