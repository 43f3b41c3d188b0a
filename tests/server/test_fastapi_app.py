"""oss_callback.fastapi under a real uvicorn server on 127.0.0.1.

Callbacks are signed here with a generated RSA key (MD5withRSA, as OSS does) and the
verifier pins its public key; forged ones come from a plain httpx client.
"""

import base64
import subprocess
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import oss_callback.fastapi as oss_fastapi
from oss_callback.fastapi import INVALID_CALLBACK_DETAIL, callback_dependency
from oss_callback.server import (
    CallbackSignatureError,
    CallbackVerifier,
    VerifiedCallback,
    verify_starlette_request,
)
from oss_callback.testing import ServeASGI

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def public_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: rsa.RSAPrivateKey, signed_path: bytes, query: bytes, body: bytes) -> str:
    """MD5withRSA over ``signed_path [?query] \\n body`` (made independently of the SDK)."""
    message = signed_path + (b"?" + query if query else b"") + b"\n" + body
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.MD5())).decode()


def callback_headers(
    key: rsa.RSAPrivateKey,
    signed_path: bytes,
    body: bytes,
    *,
    query: bytes = b"",
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    return {
        "Authorization": sign(key, signed_path, query, body),
        "x-oss-pub-key-url": base64.b64encode(b"http://gosspublic.alicdn.com/k.pem").decode(),
        "Content-Type": content_type,
    }


def make_app(verifier: CallbackVerifier | None, calls: list[VerifiedCallback]) -> FastAPI:
    app = FastAPI()
    verified = callback_dependency(verifier)

    @app.post("/oss-callback")
    async def on_upload(
        cb: Annotated[VerifiedCallback, Depends(verified)], request: Request
    ) -> dict[str, Any]:
        calls.append(cb)
        raw = await request.body()  # still readable after the dependency consumed it
        return {"Status": "OK", "object": cb.fields.get("object"), "size": cb.get("size"),
                "uid": cb.get("x:uid"), "raw_length": len(raw)}

    @app.post("/hooks/{name}")
    async def hook(name: str, cb: Annotated[VerifiedCallback, Depends(verified)]
                   ) -> dict[str, Any]:
        calls.append(cb)
        return {"name": name, "path": cb.path, "query": dict(cb.query), "fields": cb.fields}

    @app.post("/boom")
    async def boom(cb: Annotated[VerifiedCallback, Depends(verified)]) -> dict[str, str]:
        calls.append(cb)
        raise RuntimeError("the handler failed")

    return app


@pytest.fixture
def calls() -> list[VerifiedCallback]:
    return []


@pytest.fixture
def app_server(public_pem: bytes, calls: list[VerifiedCallback]) -> Iterator[ServeASGI]:
    app = make_app(CallbackVerifier(public_key=public_pem, max_body_size=64 * 1024), calls)
    with ServeASGI(app) as srv:
        yield srv


# --------------------------------------------------------------------------- the dependency


async def test_signed_callback_reaches_the_handler(
    app_server: ServeASGI, private_key: rsa.RSAPrivateKey, calls: list[VerifiedCallback]
) -> None:
    body = b"bucket=photos&object=cats%2Ftom.jpg&size=1024&x%3Auid=42"
    headers = callback_headers(private_key, b"/oss-callback", body)
    async with httpx.AsyncClient(base_url=app_server.url) as client:
        response = await client.post("/oss-callback", content=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"Status": "OK", "object": "cats/tom.jpg", "size": "1024",
                               "uid": "42", "raw_length": len(body)}
    assert len(calls) == 1
    cb = calls[0]
    assert cb.fields == {"bucket": "photos", "object": "cats/tom.jpg", "size": "1024",
                         "x:uid": "42"}
    assert cb.body == body
    assert cb.headers["authorization"] == headers["Authorization"]


async def test_json_callback_with_encoded_path_and_query(
    app_server: ServeASGI, private_key: rsa.RSAPrivateKey, calls: list[VerifiedCallback]
) -> None:
    body = b'{"bucket":"b","object":"a b.txt","size":"5"}'
    headers = callback_headers(private_key, "/hooks/up load杭".encode(), body,
                               query=b"user=put_object&n=%E6%9D%AD", content_type=JSON)
    async with httpx.AsyncClient(base_url=app_server.url) as client:
        response = await client.post(
            "/hooks/up%20load%E6%9D%AD?user=put_object&n=%E6%9D%AD", content=body,
            headers=headers,
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "name": "up load杭", "path": "/hooks/up load杭",
        "query": {"user": "put_object", "n": "杭"},
        "fields": {"bucket": "b", "object": "a b.txt", "size": "5"},
    }
    assert len(calls) == 1


JSON = "application/json"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param("unsigned", id="unsigned"),
        pytest.param("garbage-signature", id="garbage-signature"),
        pytest.param("tampered-body", id="tampered-body"),
        pytest.param("tampered-query", id="tampered-query"),
        pytest.param("tampered-path", id="tampered-path"),
        pytest.param("other-key", id="signed-with-another-key"),
    ],
)
async def test_forged_callback_is_refused_before_the_handler(
    app_server: ServeASGI,
    private_key: rsa.RSAPrivateKey,
    calls: list[VerifiedCallback],
    forge: str,
) -> None:
    body = b"bucket=photos&object=a.jpg&size=1"
    path, query = "/oss-callback", b""
    headers = callback_headers(private_key, b"/oss-callback", body)
    if forge == "unsigned":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif forge == "garbage-signature":
        headers["Authorization"] = base64.b64encode(b"\0" * 256).decode()
    elif forge == "tampered-body":
        body = b"bucket=photos&object=a.jpg&size=999"
    elif forge == "tampered-query":
        query = b"admin=1"
    elif forge == "tampered-path":
        headers = callback_headers(private_key, b"/hooks/other", body)
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        headers = callback_headers(other, b"/oss-callback", body)
    url = path + ("?" + query.decode() if query else "")
    async with httpx.AsyncClient(base_url=app_server.url) as client:
        response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": INVALID_CALLBACK_DETAIL}
    assert calls == []


async def test_oversized_body_is_refused(
    app_server: ServeASGI, private_key: rsa.RSAPrivateKey, calls: list[VerifiedCallback]
) -> None:
    body = b"object=" + b"x" * (64 * 1024)
    headers = callback_headers(private_key, b"/oss-callback", body)
    async with httpx.AsyncClient(base_url=app_server.url) as client:
        response = await client.post("/oss-callback", content=body, headers=headers)

        async def chunks() -> Any:  # no Content-Length: the limit applies while streaming
            yield body[:1000]
            yield body[1000:]

        streamed = await client.post("/oss-callback", content=chunks(), headers=headers)
    assert response.status_code == 400
    assert streamed.status_code == 400
    assert calls == []


async def test_handler_raising_gives_500(
    app_server: ServeASGI, private_key: rsa.RSAPrivateKey, calls: list[VerifiedCallback]
) -> None:
    body = b"object=a"
    headers = callback_headers(private_key, b"/boom", body)
    async with httpx.AsyncClient(base_url=app_server.url) as client:
        response = await client.post("/boom", content=body, headers=headers)
    assert response.status_code == 500
    assert len(calls) == 1  # verified, then the handler failed


async def test_default_verifier_refuses_keys_outside_gosspublic(
    private_key: rsa.RSAPrivateKey, calls: list[VerifiedCallback]
) -> None:
    app = make_app(None, calls)  # callback_dependency() with no verifier
    body = b"object=a"
    headers = callback_headers(private_key, b"/oss-callback", body)
    headers["x-oss-pub-key-url"] = base64.b64encode(b"http://127.0.0.1:1/k.pem").decode()
    with ServeASGI(app) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/oss-callback", content=body, headers=headers)
    assert response.status_code == 400
    assert calls == []


def test_fastapi_module_surface() -> None:
    assert oss_fastapi.__all__ == ["INVALID_CALLBACK_DETAIL", "callback_dependency"]
    dependency = callback_dependency(CallbackVerifier())
    assert callable(dependency)


# --------------------------------------------------------------------------- plain Starlette


async def test_starlette_helper_under_uvicorn(
    public_pem: bytes, private_key: rsa.RSAPrivateKey
) -> None:
    verifier = CallbackVerifier(public_key=public_pem)
    seen: list[VerifiedCallback] = []

    async def endpoint(request: Any) -> Response:
        try:
            cb = await verify_starlette_request(verifier, request)
        except CallbackSignatureError as exc:
            return JSONResponse({"error": exc.reason}, status_code=400)
        seen.append(cb)
        return JSONResponse({"Status": "OK", "bucket": cb["bucket"]})

    app = Starlette(routes=[Route("/cb", endpoint, methods=["POST"])])
    body = b"bucket=b&object=o"
    with ServeASGI(app) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            good = await client.post("/cb", content=body,
                                     headers=callback_headers(private_key, b"/cb", body))
            bad = await client.post("/cb", content=body + b"x",
                                    headers=callback_headers(private_key, b"/cb", body))
    assert good.status_code == 200
    assert good.json() == {"Status": "OK", "bucket": "b"}
    assert bad.status_code == 400
    assert bad.json() == {"error": "bad_signature"}
    assert len(seen) == 1


def test_missing_fastapi_gives_an_import_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n"
        "    import oss_callback.fastapi\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'oss-callback[fastapi]'" in out
