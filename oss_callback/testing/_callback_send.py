"""Sending an upload callback as OSS does (PROTOCOL.md §2): POST the signed body to each URL
in turn, within OSS's deadline, and judge the answer by OSS's rules (``200``, JSON, at
most 1 MB); each attempt's outcome says what went wrong, in OSS's words.

SNI (``callbackSNI``): as on OSS, an https callback carries SNI only when the callback says
``"callbackSNI":true``; otherwise the TLS handshake names no server.  When such a handshake
fails, the ``CallbackFailed`` message gets a suffix (OSS's text stays first) saying to turn
SNI on: the emulator's diagnosis, which OSS itself does not give.

``oss-callback callback-test`` sends its callbacks through :func:`send_callback` too, so the
command and the emulator judge a callback server by the same rules.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from oss_callback.testing._callbacks import CallbackConfig, sign_callback

__all__ = ["CONNECT_FAILED", "FAILURES", "CallbackOutcome", "callback_client", "send_callback"]

MAX_RESPONSE_BYTES = 1024 * 1024
#: OSS's ``CallbackFailed`` message when the callback URL can't be reached.
CONNECT_FAILED = "Error status : -1. OSS can not connect to your callbackUrl, please check it."
#: Passed as the TLS server name when callbackSNI is false: an IP literal never goes out as
#: SNI, and the callback client checks no certificate, so the name is used for nothing else.
_NO_SNI = "0.0.0.0"  # noqa: S104 - a TLS server name, not an address to bind


def callback_client() -> httpx.AsyncClient:
    """The HTTP client callbacks are POSTed with (use it on an asyncio loop; close it)."""
    return httpx.AsyncClient(
        trust_env=False,  # never route callbacks through an environment proxy
        verify=False,  # noqa: S501 - local test callback servers use self-signed certs
        follow_redirects=False,  # OSS doesn't follow them either
        timeout=None,  # noqa: S113 - the per-attempt deadline wraps each request
        limits=httpx.Limits(max_keepalive_connections=0),
    )


#: Why a callback attempt failed (:attr:`CallbackOutcome.failure`).
FAILURES = ("timeout", "connect", "tls", "not_tls", "status", "too_long", "not_json")
#: TLS errors that mean the server at that port doesn't speak TLS at all (plain HTTP).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
                      "HTTPS_PROXY_REQUEST", "RECORD_LAYER_FAILURE"})


@attrs.frozen(kw_only=True)
class CallbackOutcome:
    """One callback attempt's result.

    ``failure`` says why it failed, as a word of :data:`FAILURES` (``None``: it succeeded);
    ``detail`` what went wrong below OSS's message (e.g. the TLS alert), if anything.
    """

    url: str
    headers: Mapping[str, str]
    body: bytes
    status: int | None
    response_body: bytes | None
    error: str | None
    failure: str | None = None
    detail: str | None = None
    sni: bool = False
    elapsed: float = 0.0


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connection, if that is what it was."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def _tls_reason(error: ssl.SSLError) -> str:
    reason = getattr(error, "reason", None)
    return str(reason) if reason else (" ".join(str(error).split()) or type(error).__name__)


async def _post(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: bytes,
    extensions: dict[str, Any],
) -> tuple[int, bytes, bool]:
    async with client.stream(
        "POST", url, headers=headers, content=body, extensions=extensions
    ) as response:
        chunks = bytearray()
        async for chunk in response.aiter_raw():
            chunks += chunk
            if len(chunks) > MAX_RESPONSE_BYTES:
                return response.status_code, bytes(chunks[:MAX_RESPONSE_BYTES]), True
        return response.status_code, bytes(chunks), False


async def send_callback(
    client: httpx.AsyncClient,
    config: CallbackConfig,
    body: bytes,
    pub_key_url: str,
    timeout: float,
    *,
    key: rsa.RSAPrivateKey | None = None,
) -> list[CallbackOutcome]:
    """POST to each URL in order until one succeeds; one outcome per attempt.

    Each attempt gets ``timeout`` seconds (OSS: 5) for all of it; it succeeds only with a
    ``200`` whose body is JSON and at most 1 MB.  https URLs carry SNI only when
    ``config.sni`` (``callbackSNI``) is true.  Signed with ``key`` (default: the emulator's).
    """
    outcomes: list[CallbackOutcome] = []
    for url in config.urls:
        headers = {
            "Content-Type": config.body_type,
            "authorization": sign_callback(url, body, key),
            "x-oss-pub-key-url": base64.b64encode(pub_key_url.encode()).decode(),
            "User-Agent": "aliyun-oss-callback (oss_callback emulator)",
        }
        if config.host:
            headers["Host"] = config.host
        parts = urlsplit(url)
        https = parts.scheme == "https"
        hostname = parts.hostname or ""
        sends_sni = https and config.sni and not _is_ip_literal(hostname)
        extensions: dict[str, Any] = {}
        if https and not config.sni:
            extensions["sni_hostname"] = _NO_SNI
        started = time.monotonic()
        status: int | None = None
        response_body: bytes | None = None
        failure: str | None = None
        detail: str | None = None
        try:
            status, response_body, too_long = await asyncio.wait_for(
                _post(client, url, headers, body, extensions), timeout
            )
        except asyncio.TimeoutError:
            cost = int((time.monotonic() - started) * 1000)
            error: str | None = (
                f"Error status : -1 8.The reply timeout, cost: {cost} MS, "
                f"timeout: {int(timeout * 1000)} MS (ErrorCode: 00007)"
            )
            failure = "timeout"
        except (httpx.HTTPError, OSError) as exc:
            error = CONNECT_FAILED
            tls = _tls_error(exc) if https else None
            if tls is not None and _tls_reason(tls) in _NOT_TLS:
                failure = "not_tls"
                detail = (f"the server at {hostname}:{parts.port or 443} doesn't speak TLS "
                          f"({_tls_reason(tls)})")
            elif tls is not None:
                failure = "tls"
                detail = f"the TLS handshake with {hostname} failed ({_tls_reason(tls)})"
                if not config.sni and not _is_ip_literal(hostname):
                    detail += " and no SNI was sent (callbackSNI is false)"
                    error += (
                        " - the TLS handshake failed without SNI (callbackSNI is false): "
                        "use Callback(sni=True), or leave sni at its default (on for https "
                        "URLs)"
                    )
            else:
                failure = "connect"
                detail = " ".join(str(exc).split()) or type(exc).__name__
        else:
            error = None
            if too_long:
                error = f"Error Status : {status}.User server return too long content-length value"
                failure = "too_long"
            elif status != 200:
                error = f"Error status : {status}."
                failure = "status"
            else:
                try:
                    json.loads((response_body or b"").decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    error = "Response body is not valid json format."
                    failure = "not_json"
        outcomes.append(
            CallbackOutcome(
                url=url,
                headers=headers,
                body=body,
                status=status,
                response_body=response_body,
                error=error,
                failure=failure,
                detail=detail,
                sni=sends_sni,
                elapsed=time.monotonic() - started,
            )
        )
        if error is None:
            break
    return outcomes
