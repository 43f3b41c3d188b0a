"""The httpx client the SDK builds when the user doesn't pass one, and the checks on theirs.

The default is a plain :class:`httpx.AsyncClient` (httpx's own transport: httpcore's pool,
h11), ``trust_env=True``, so proxies and CA bundles from the environment apply as in any
httpx program and ``respx.mock`` intercepts it. ``http_engine="aiohttp"`` mounts
aiohttp's transport (through httpx-aiohttp, an optional extra) under the same
``httpx.AsyncClient``: hooks, proxies from the environment (httpx's proxy transports carry
those requests) and the SDK's error mapping are unchanged.
"""

from __future__ import annotations

import http.cookiejar
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
import httpx

from oss_callback.client._http import USER_AGENT

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "BuiltClient",
    "HttpEngine",
    "build_http_client",
    "check_user_http_client",
    "loop_options",
]

HttpEngine = Literal["httpx", "aiohttp"]
_ENGINES = ("httpx", "aiohttp")

#: 60 s for each read and write, 10 s to connect; waiting for a free connection is not
#: limited (an upload's parts queue for the pool by design).
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=None)
#: Connections of the SDK-built pool. See benchmarks/RESULTS.md ("small puts"): httpcore's
#: per-request bookkeeping grows with the pool (it polls every idle connection and counts
#: idle ones per connection), so on a fast network a small pool is faster: 2,000 small puts
#: at 64 in flight ran at 680-760 objects/s with 8 connections, 410-570 with 16. 8 carries
#: two resumable uploads at their default 4 parts in flight (oss2 pools 10, boto3 10).
DEFAULT_MAX_CONNECTIONS = 8
#: How long an idle connection is kept (OSS closes idle connections after about 60 s).
KEEPALIVE_EXPIRY = 30.0


class _NoCookies(http.cookiejar.CookieJar):
    """OSS sets no cookies: keep none, and skip httpx's per-response cookie parsing (about
    10% of the client's CPU per small request)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


def loop_options() -> dict[str, Any]:
    """anyio ``backend_options`` for the event loops this package starts itself (the sync
    facade's thread, the commands): uvloop where it is installed (the ``emulator`` extra),
    else asyncio's own. Measured: 5-15% more small puts through the sync facade."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


@attrs.frozen
class BuiltClient:
    """The SDK-built httpx client, the gate on requests in flight, the User-Agent."""

    client: httpx.AsyncClient
    gate: anyio.Semaphore
    user_agent: str


def build_http_client(
    *,
    timeout: httpx.Timeout | float | None,
    max_connections: int | None,
    transport: httpx.AsyncBaseTransport | None,
    http_engine: str,
) -> BuiltClient:
    """The SDK's own :class:`httpx.AsyncClient` (the caller closes it)."""
    if http_engine not in _ENGINES:
        raise ValueError(f"http_engine must be 'httpx' or 'aiohttp', got {http_engine!r}")
    n = DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n,
                          keepalive_expiry=KEEPALIVE_EXPIRY)
    user_agent = USER_AGENT
    mounts: dict[str, httpx.AsyncBaseTransport | None] | None = None
    if http_engine == "aiohttp":
        if transport is not None:
            raise TypeError("pass either transport= or http_engine='aiohttp', not both")
        aiohttp_transport, version = _aiohttp_transport(limits)
        user_agent = f"{USER_AGENT} aiohttp/{version}"
        # Mounted for "all://", not passed as transport=: httpx then still reads the proxy
        # variables and mounts its proxy transports for "http://"/"https://" (which win over
        # "all://"), so proxied requests go through httpx's proxy support. (Hosts excluded
        # by NO_PROXY map to httpx's own transport.) With ALL_PROXY every request is proxied
        # anyway, by httpx: the aiohttp mount would hide it, so it is left out.
        if not urllib.request.getproxies_environment().get("all"):
            mounts = {"all://": aiohttp_transport}
    client = httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        limits=limits,
        trust_env=True,
        follow_redirects=False,
        transport=transport,
        mounts=mounts,
        cookies=_NoCookies(),
    )
    return BuiltClient(client=client, gate=anyio.Semaphore(n), user_agent=user_agent)


def check_user_http_client(
    client: object,
    *,
    timeout: object,
    max_connections: object,
    transport: object,
    http_engine: str,
) -> None:
    """Refuse what can't work with a user's httpx client, saying what to do instead."""
    if not isinstance(client, httpx.AsyncClient):
        raise TypeError(
            f"http_client must be an httpx.AsyncClient, not {type(client).__name__} (the "
            "sync Client runs the async core too, so it also takes an httpx.AsyncClient)"
        )
    given = [name for name, value in (("timeout", timeout), ("max_connections",
             max_connections), ("transport", transport)) if value is not None]
    if http_engine != "httpx":
        given.append("http_engine")
    if given:
        raise TypeError(
            f"{', '.join(given)} configure the SDK's own httpx client and can't be combined "
            "with http_client=: set them on your httpx.AsyncClient instead (e.g. "
            "httpx.AsyncClient(timeout=..., limits=httpx.Limits(max_connections=...)))"
        )
    if client.is_closed:
        raise ValueError("http_client is closed; pass an open httpx.AsyncClient")
    if client.auth is not None:
        raise ValueError(
            "http_client has auth set, which would replace the OSS signature; use an "
            "httpx.AsyncClient without auth (the SDK signs every request)"
        )
    if client.params:
        raise ValueError(
            "http_client has default params, which would change every signed URL; use an "
            "httpx.AsyncClient without params"
        )
    bad = sorted(name for name in client.headers
                 if name.lower().startswith(("x-oss-", "content-")))
    if bad:
        raise ValueError(
            f"http_client has default headers {bad} that OSS signatures cover; pass them per "
            "upload (headers=...) instead"
        )


def _aiohttp_transport(limits: httpx.Limits) -> tuple[httpx.AsyncBaseTransport, str]:
    try:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport
    except ImportError as exc:
        raise ValueError(
            "http_engine='aiohttp' needs aiohttp and httpx-aiohttp: "
            "pip install 'oss-callback[aiohttp]'"
        ) from exc
    ssl_context = httpx.create_ssl_context(trust_env=True)  # one trust store, as httpx's
    max_connections = limits.max_connections or 0

    def session() -> aiohttp.ClientSession:
        # skip_auto_headers: aiohttp would add "Content-Type: application/octet-stream" to
        # every body, after the request was signed without it (SignatureDoesNotMatch).
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections, ssl=ssl_context,
                keepalive_timeout=limits.keepalive_expiry or KEEPALIVE_EXPIRY,
            ),
            skip_auto_headers=("Content-Type",),
            auto_decompress=False,
        )

    class AsyncioOnlyAiohttpTransport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            import sniffio

            if sniffio.current_async_library() != "asyncio":
                raise RuntimeError(
                    "http_engine='aiohttp' runs on asyncio only; on "
                    f"{sniffio.current_async_library()} use the default http_engine='httpx'"
                )
            response: httpx.Response = await super().handle_async_request(request)
            return response

    factory: Callable[[], Any] = session
    return AsyncioOnlyAiohttpTransport(client=factory, limits=limits), aiohttp.__version__
