"""Secrets never reach an error or a log line (issue #14, part 6), whatever a server echoes.

A hostile server (a raw socket) reads each request and echoes its STS token, its signature
and its ``Authorization`` header, plus the access key secret (as a misconfigured proxy
that knows it might), in every place an error is made of: the error XML's ``<Message>``
and other fields, ``x-oss-err`` (base64 XML, on HEAD), an HTML body, plain headers, a
redirect's ``Location``, and a header line so malformed that the HTTP parser's own error
quotes it. Cut-off echoes (a token's first 60 characters) and the hex dump OSS puts in
``StringToSignBytes`` count too. For V1 and V4, through put_object and head_object, no run
of 16 characters of any secret may appear in ``str``/``repr``/the traceback (chained
causes included)/``message``/``details``/a pickle of the error, or in any log record.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import pickle
import re
import secrets
import socket
import threading
from collections.abc import Iterator

import pytest
from support.reliability_helpers import every_text_of

from oss_callback import AsyncClient, OSSError, RequestError, RetryPolicy, ServiceError
from oss_callback.protocol._error_answers import make_service_error
from oss_callback.protocol._redact import FRAGMENT, Redactor

SECRET = "hostile-test-secret-" + secrets.token_hex(12)
#: An STS token as Alibaba Cloud issues them: long standard base64 (with + / =).
TOKEN = "CAIS" + base64.b64encode(os.urandom(330)).decode()
ACCESS_KEY_ID = "STS.NUgYrLnoC37mZZCNnAbez2ZvD"

MODES = ["error-xml", "html", "headers", "redirect", "protocol-error", "cut-short"]


def grams(secret: str) -> set[str]:
    return {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}


def leaked(haystack: str, secret_texts: list[str]) -> list[str]:
    """Every run of FRAGMENT characters of a secret found in ``haystack``."""
    return sorted({g for s in secret_texts for g in grams(s) if g in haystack})


# --------------------------------------------------------------------------- the server


class HostileServer:
    """Answers every request with an error that echoes the request's credentials."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        #: every signature and Authorization value the server saw (one per attempt)
        self.signatures: list[str] = []
        self.authorizations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(10)
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            rest += conn.recv(65536)
        authorization = headers.get("authorization", "")
        match = re.search(r"Signature=([0-9a-f]+)|^OSS [^:]+:(\S+)", authorization)
        assert match, authorization
        signature = match.group(1) or match.group(2)
        self.signatures.append(signature)
        self.authorizations.append(authorization)
        token = headers.get("x-oss-security-token", "")
        assert token == TOKEN
        echo = (f"you sent token {token} with Authorization: {authorization} (signature "
                f"{signature}); your secret is {SECRET}; hex "
                + " ".join(f"{b:02x}" for b in token.encode()[:40]))
        conn.sendall(self._response(method, echo, token, signature))

    def _response(self, method: str, echo: str, token: str, signature: str) -> bytes:
        head = ""
        body = b""
        if self.mode in ("error-xml", "cut-short"):
            if self.mode == "cut-short":  # what a server that truncates its echo sends
                echo = f"token {token[:60]}... secret {SECRET[:20]}... sig {signature[:18]}"
            xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied"
                   f"</Code><Message>{echo}</Message><RequestId>5C0A</RequestId>"
                   f"<HostId>{token}</HostId><SignatureProvided>{signature}"
                   f"</SignatureProvided><StringToSign>PUT\n\n\nx-oss-security-token:"
                   f"{token}\n/b-1/k</StringToSign><StringToSignBytes>"
                   + " ".join(f"{b:02x}" for b in token.encode())
                   + f"</StringToSignBytes><{re.sub('[^A-Za-z]', '', token)[:30]}>tag"
                   f"</{re.sub('[^A-Za-z]', '', token)[:30]}></Error>").encode()
            status = "403 Forbidden"
            head += "Content-Type: application/xml\r\n"
            if method == "HEAD":
                head += f"x-oss-err: {base64.b64encode(xml).decode()}\r\n"
            body = xml
        elif self.mode == "html":
            status = "502 Bad Gateway"
            head += "Content-Type: text/html\r\n"
            body = (f"<html><body><h1>502</h1><pre>{echo}</pre></body></html>").encode()
        elif self.mode == "headers":
            status = "500 Internal Server Error"
            head += (f"x-oss-request-id: {token}\r\nx-oss-ec: {signature}\r\n"
                     f"x-oss-err: {base64.b64encode(echo.encode()).decode()}\r\n")
        elif self.mode == "redirect":
            status = "307 Temporary Redirect"
            head += (f"Location: https://elsewhere.example/b-1/k?OSSAccessKeyId="
                     f"{ACCESS_KEY_ID}&Signature={signature}&security-token={token}\r\n")
        else:  # protocol-error: a header name h11 refuses, quoting it in its error
            status = "403 Forbidden"
            head += f"{token[4:60].replace('/', '(')}(: {SECRET}\r\n"
        head += "x-oss-request-id: 5C0B\r\n" if self.mode != "headers" else ""
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        return (f"HTTP/1.1 {status}\r\n{head}\r\n").encode() + (b"" if method == "HEAD"
                                                               else body)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    server = HostileServer(request.param)
    yield server
    server.close()


# --------------------------------------------------------------------------- the checks


def error_texts(error: BaseException) -> str:
    texts = [every_text_of(error), repr(error.__dict__),
             pickle.dumps(error).decode("latin-1")]
    if isinstance(error, ServiceError):
        texts += [error.message, repr(error.details), str(error.request_id), str(error.ec),
                  str(error.host_id), str(error.hint)]
    return "\n".join(texts)


@pytest.mark.parametrize("hostile", MODES, indirect=True)
@pytest.mark.parametrize("operation", ["put_object", "head_object"])
@pytest.mark.parametrize("version", ["v1", "v4"])
async def test_no_secret_echoed_by_a_server_reaches_an_error_or_a_log(
    hostile: HostileServer, operation: str, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="oss_callback")
    caplog.set_level(logging.INFO, logger="httpx")
    async with AsyncClient(hostile.endpoint, ACCESS_KEY_ID, SECRET, security_token=TOKEN,
                           region="cn-hangzhou", signature_version=version,  # type: ignore[arg-type]
                           retry=RetryPolicy.no_wait(max_attempts=2)) as client:
        bucket = client.get_bucket("b-1")
        request = (bucket.put_object("k", b"payload") if operation == "put_object"
                   else bucket.head_object("k"))
        with pytest.raises(OSSError) as info:
            await request
    error = info.value
    expected = RequestError if hostile.mode == "protocol-error" else ServiceError
    assert isinstance(error, expected), repr(error)
    assert hostile.signatures  # the server saw (and echoed) real credentials
    secret_texts = [TOKEN, SECRET, *hostile.signatures]
    haystack = error_texts(error)
    assert leaked(haystack, secret_texts) == []
    for authorization in hostile.authorizations:
        assert authorization not in haystack
    logs = caplog.text + "\n".join(repr(r.args) for r in caplog.records)
    assert leaked(logs, secret_texts) == []
    # and the error still says what happened
    if isinstance(error, ServiceError):
        assert error.status in (403, 502, 500, 307)
        assert "<redacted>" in haystack or (hostile.mode == "html"
                                            and operation == "head_object")


@pytest.mark.parametrize("hostile", ["redirect"], indirect=True)
async def test_a_redacted_redirect_still_names_where_to(hostile: HostileServer) -> None:
    async with AsyncClient(hostile.endpoint, ACCESS_KEY_ID, SECRET, security_token=TOKEN,
                           region="cn-hangzhou", retry=RetryPolicy.no_wait()) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"payload")
    text = str(info.value)
    assert "https://elsewhere.example/b-1/k" in text
    assert "endpoint='https://elsewhere.example'" in text
    assert "Signature=<redacted>" in text and "security-token=<redacted>" in text
    assert f"OSSAccessKeyId={ACCESS_KEY_ID}" in text  # the key id is no secret


# --------------------------------------------------------------------------- units


def test_the_redactor_removes_every_form_of_a_secret() -> None:
    redact = Redactor([SECRET, TOKEN])
    hexed = " ".join(f"{b:02X}" for b in TOKEN.encode())
    from urllib.parse import quote, quote_plus

    for text in (TOKEN, quote(TOKEN, safe=""), quote_plus(TOKEN), TOKEN.replace("/", "\\/"),
                 hexed, TOKEN.encode().hex(), TOKEN[:17], TOKEN[100:140], SECRET,
                 SECRET[3:22]):
        cleaned = redact(f"before {text} after")
        assert cleaned.startswith("before ") and cleaned.endswith(" after")
        assert leaked(cleaned, [TOKEN, SECRET, hexed]) == []
        assert "<redacted>" in cleaned


def test_the_redactor_leaves_ordinary_text_alone() -> None:
    redact = Redactor([SECRET, TOKEN], exact=["OSS4-HMAC-SHA256 Credential=AK/x,Signature=ab"])
    text = ("HTTP 403 SignatureDoesNotMatch: The request signature we calculated does not "
            "match the signature you provided. (request_id=5C0A) OSS4-HMAC-SHA256\n"
            "20240101T000000Z\n20240101/cn-hangzhou/oss/aliyun_v4_request")
    assert redact(text) == text
    # whole Authorization values go, but their (public) parts stay readable elsewhere
    assert redact("auth OSS4-HMAC-SHA256 Credential=AK/x,Signature=ab!") == (
        "auth <redacted>!")


@pytest.mark.parametrize(("text", "expected"), [
    ("GET /k?Signature=abc%2Bdef&x=1", "GET /k?Signature=<redacted>&x=1"),
    ("x-oss-signature=0123abcd&y", "x-oss-signature=<redacted>&y"),
    ("security-token: CAIS1234, next", "security-token: <redacted>, next"),
    ("x-oss-security-token=CAIS", "x-oss-security-token=<redacted>"),
    ("Authorization: OSS LTAI5tXyz:MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=", "Authorization: OSS "
     "LTAI5tXyz:<redacted>"),
    ("...,Signature=9f86d081884c7d659a2feaa0c55ad015", "...,Signature=<redacted>"),
    ("see http://host:9000/path for OSS https://x.example", "see http://host:9000/path for "
     "OSS https://x.example"),
])
def test_labelled_credentials_go_even_when_unknown(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_make_service_error_builds_every_field_from_redacted_text() -> None:
    redact = Redactor([TOKEN])
    xml = (f"<Error><Code>X{TOKEN}</Code><Message>m {TOKEN[:30]}</Message>"
           f"<RequestId>{TOKEN}</RequestId><{TOKEN[4:20].replace('+', 'a').replace('/', 'b')}"
           f">v</{TOKEN[4:20].replace('+', 'a').replace('/', 'b')}></Error>").encode()
    error = make_service_error(403, {"x-oss-ec": TOKEN}, xml, redact=redact)
    assert leaked(error_texts(error), [TOKEN]) == []
    html = f"<html>{'x' * 150} {TOKEN} </html>".encode()  # the token spans the 200-char cut
    error = make_service_error(502, {}, html, redact=redact)
    assert leaked(error_texts(error), [TOKEN]) == []
    assert error.message.startswith("<html>xxx")
