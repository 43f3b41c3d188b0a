"""What a request that got no answer ran into, told so that people can act on it.

httpx's transport errors become :class:`RequestError` here, with the reason found down the
cause chain (some wrappers carry no message; trio's TLS errors hide below two) and, for the
errors people configure their way out of, what to do: an untrusted certificate (point
``SSL_CERT_FILE`` at the CA bundle) or a proxy from the environment that refused or failed
(which variable routed the request there). Every message is redacted, and a cause that
carries a secret is left off the chain.
"""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
from typing import NoReturn

import httpx

from oss_callback.protocol._endpoint import Endpoint
from oss_callback.protocol._errors import RequestError
from oss_callback.protocol._redact import Redact

__all__ = ["raise_request_error", "raise_transport_error"]


def raise_transport_error(exc: httpx.TransportError, *, method: str, what: str,
                          endpoint: Endpoint, url: str, trust_env: bool,
                          redact: Redact) -> NoReturn:
    """Raise the :class:`RequestError` for ``method what`` sent to ``url``, which ended
    in ``exc`` with no answer; ``trust_env``: the httpx client's (proxies from the
    environment)."""
    if isinstance(exc, httpx.TimeoutException):
        if not _is_certificate_error(exc):
            raise RequestError(
                f"{method} {what} timed out ({type(exc).__name__}); "
                "check the network or raise the timeout"
            ) from exc
        # httpx-aiohttp reports an untrusted certificate as ConnectTimeout
        raise_request_error(
            f"{method} {what} failed: {_reason(exc)} (endpoint "
            f"{endpoint}){_hint(exc, trust_env, url=url)}",
            exc, redact,
        )
    raise_request_error(
        f"{method} {what} failed: {type(exc).__name__}: "
        f"{_reason(exc)} (endpoint {endpoint})"
        f"{_hint(exc, trust_env, url=url)}",
        exc, redact,
    )


def raise_request_error(message: str, exc: BaseException, redact: Redact) -> NoReturn:
    """Raise a :class:`RequestError` made of redacted text, from ``exc``; but if ``exc`` (or
    one down its chain) carries a secret (e.g. a protocol error quoting an echoed header),
    from nothing: a traceback must not show it either."""
    error = RequestError(redact(message))
    if any(redact(str(cause)) != str(cause) for cause in _causes(exc)):
        raise error from None
    raise error from exc


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (trio's TLS errors hide below two wrappers)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _reason(exc: BaseException) -> str:
    """The first non-empty message down the cause chain (some wrappers carry none)."""
    for cause in _causes(exc):
        if str(cause):
            return str(cause) if cause is exc else f"{type(cause).__name__}: {cause}"
    return "connection error"


def _is_certificate_error(exc: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(c)
               for c in _causes(exc))


def _hint(exc: httpx.TransportError, trust_env: bool, url: str) -> str:
    """What to do about the transport errors people configure their way out of."""
    if _is_certificate_error(exc):
        return ("; the server's certificate is not trusted: point SSL_CERT_FILE (or "
                "SSL_CERT_DIR) at your CA bundle, or pass http_client=httpx.AsyncClient("
                "verify=ssl.create_default_context(cafile=...))")
    proxy = _env_proxy(url) if trust_env else None
    if isinstance(exc, httpx.ProxyError) or (proxy and isinstance(exc, httpx.ConnectError)):
        via = f" {proxy[1]} (from {proxy[0]})" if proxy else ""
        return (f"; the request went through the proxy{via}, which refused or failed: check "
                "that it is up and the HTTPS_PROXY/HTTP_PROXY/ALL_PROXY setting (or the proxy= "
                "of your http_client), or exclude this host with NO_PROXY")
    return ""


def _env_proxy(url: str) -> tuple[str, str] | None:
    """``(variable, proxy URL without credentials)`` the environment routes ``url`` through.

    Only for the error message; httpx decides the routing (its rules match these).
    """
    parsed = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    host = parsed.hostname or ""
    for entry in (e.strip().lower() for e in proxies.get("no", "").split(",")):
        entry = entry.split("://", 1)[-1].split(":", 1)[0] if not entry.startswith("[") else entry
        if entry == "*" or (entry and (host == entry.lstrip(".")
                                       or host.endswith("." + entry.lstrip(".")))):
            return None
    for scheme in (parsed.scheme, "all"):
        if proxies.get(scheme):
            proxy = urllib.parse.urlsplit(proxies[scheme] if "://" in proxies[scheme]
                                          else "http://" + proxies[scheme])
            where = proxy.hostname or ""
            if proxy.port:
                where += f":{proxy.port}"
            return f"{scheme.upper()}_PROXY", f"{proxy.scheme}://{where}"
    return None

