"""Error parsing and the error classes, Credentials, and Endpoint/key helpers."""

from __future__ import annotations

import base64
import pickle
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
import respx

from oss_callback import AsyncClient, Callback, RetryPolicy
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import Endpoint, encode_key, validate_bucket_name, validate_key
from oss_callback.protocol._error_answers import (
    decode_x_oss_err,
    make_service_error,
    parse_error_xml,
)
from oss_callback.protocol._errors import (
    CallbackError,
    CheckpointError,
    ClientError,
    FileChangedError,
    InconsistentError,
    ObjectTooLargeError,
    OSSError,
    RequestError,
    ResponseError,
    ServiceError,
)
from oss_callback.protocol._models import PutObjectResult

# PROTOCOL.md §5, from [V2] tests/unit/test_client.py::response_403_InvalidAccessKeyId.
INVALID_AK_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error>
    <Code>InvalidAccessKeyId</Code>
    <Message>The OSS Access Key Id you provided does not exist in our records.</Message>
    <RequestId>id-1234</RequestId>
    <HostId>oss-cn-hangzhou.aliyuncs.com</HostId>
    <OSSAccessKeyId>ak</OSSAccessKeyId>
    <EC>0002-00000902</EC>
    <RecommendDoc>https://api.aliyun.com/troubleshoot?q=0002-00000902</RecommendDoc>
</Error>
"""
INVALID_AK_FIELDS = {
    "Code": "InvalidAccessKeyId",
    "Message": "The OSS Access Key Id you provided does not exist in our records.",
    "RequestId": "id-1234",
    "HostId": "oss-cn-hangzhou.aliyuncs.com",
    "OSSAccessKeyId": "ak",
    "EC": "0002-00000902",
    "RecommendDoc": "https://api.aliyun.com/troubleshoot?q=0002-00000902",
}

# PROTOCOL.md §1.4, from [DOCS] Errors and Troubleshooting/Upload callback.md.
CALLBACK_FAILED_XML = b"""<Error>
  <Code>CallbackFailed</Code>
  <Message>Response body is not valid json format.</Message>
  <RequestId>587C81A125F797621829923D</RequestId>
  <HostId>bucket.oss-cn-hangzhou.aliyuncs.com</HostId>
</Error>"""

# PROTOCOL.md §1.2, from [DOCS] Errors and Troubleshooting/Upload callback.md.
INVALID_ARGUMENT_XML = b"""<Error>
  <Code>InvalidArgument</Code>
  <Message>The callback configuration is not json format.</Message>
  <RequestId>587C79A3DD373E2676F73ECE</RequestId>
  <HostId>bucket.oss-cn-hangzhou.aliyuncs.com</HostId>
  <ArgumentName>callback</ArgumentName>
  <ArgumentValue>{"callbackUrl":"8.8.8.8:9090"}</ArgumentValue>
</Error>"""

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# What OSS answers for a bucket in another region ([V2]/[OSS2] handle it as a ServiceError).
PERMANENT_REDIRECT_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code><Message>'
    b"The bucket you are attempting to access must be addressed using the specified "
    b"endpoint. Please send all future requests to this endpoint.</Message><RequestId>"
    b"5C07</RequestId><HostId>b.oss-cn-hangzhou.aliyuncs.com</HostId><Bucket>b</Bucket>"
    b"<Endpoint>oss-cn-beijing.aliyuncs.com</Endpoint></Error>")


def _stored() -> PutObjectResult:
    return PutObjectResult(
        key="photos/cat.jpg",
        etag="D8E8FCA2DC0F896FD7CB4CB0031BA249",
        crc64=5981764153023615706,
        request_id="587C81A125F797621829923D",
        callback_status=203,
    )


# --------------------------------------------------------------------------- parse_error_xml


def test_parse_invalid_access_key_sample_keeps_all_children() -> None:
    assert parse_error_xml(INVALID_AK_XML) == INVALID_AK_FIELDS


def test_parse_callback_failed_sample() -> None:
    assert parse_error_xml(CALLBACK_FAILED_XML) == {
        "Code": "CallbackFailed",
        "Message": "Response body is not valid json format.",
        "RequestId": "587C81A125F797621829923D",
        "HostId": "bucket.oss-cn-hangzhou.aliyuncs.com",
    }


def test_parse_argument_name_and_value() -> None:
    fields = parse_error_xml(INVALID_ARGUMENT_XML)
    assert fields["ArgumentName"] == "callback"
    assert fields["ArgumentValue"] == '{"callbackUrl":"8.8.8.8:9090"}'


def test_parse_namespaced_error() -> None:
    xml = (
        b'<Error xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com"><Code>NoSuchKey</Code>'
        b"<Message>The specified key does not exist.</Message><Key>a/b</Key></Error>"
    )
    assert parse_error_xml(xml) == {
        "Code": "NoSuchKey",
        "Message": "The specified key does not exist.",
        "Key": "a/b",
    }


@pytest.mark.parametrize(
    "body",
    [
        b"",
        HTML_502,
        b"<html><body>oops</body></html>",
        b"not xml at all",
        b"<Error><Code>Unclosed",
        b'{"Code":"NoSuchKey"}',
        b"<ListBucketResult><Name>b</Name></ListBucketResult>",
        b"\xff\xfe\x00garbage",
    ],
)
def test_parse_non_error_bodies(body: bytes) -> None:
    assert parse_error_xml(body) == {}


def test_parse_rejects_entity_expansion() -> None:
    # A "billion laughs" body (10**10 characters once expanded) must not be expanded.
    entities = "".join(
        f'<!ENTITY l{i} "{(f"&l{i - 1};" * 10) if i else "a" * 10}">' for i in range(10)
    )
    bomb = (
        f'<?xml version="1.0"?><!DOCTYPE Error [{entities}]>'
        "<Error><Code>X</Code><Message>&l9;</Message></Error>"
    ).encode()
    assert len(bomb) < 1024
    fields = parse_error_xml(bomb)
    assert len(fields.get("Message", "")) <= 64 * 1024


def test_oversize_body_not_parsed() -> None:
    padding = b"<Pad>" + b"x" * (2 * 1024 * 1024) + b"</Pad>"
    big = b"<Error><Code>NoSuchKey</Code><Message>m</Message>" + padding + b"</Error>"
    assert parse_error_xml(big) == {}
    err = make_service_error(404, {}, big)
    assert type(err) is ServiceError
    assert err.code == ""
    assert err.details == {}
    assert len(str(err)) < 1000


def test_moderate_body_still_parsed() -> None:
    padding = b"<Pad>" + b"x" * (8 * 1024) + b"</Pad>"
    body = b"<Error><Code>NoSuchKey</Code>" + padding + b"</Error>"
    assert parse_error_xml(body)["Code"] == "NoSuchKey"


# --------------------------------------------------------------------------- x-oss-err


def test_decode_x_oss_err_header() -> None:
    header = base64.b64encode(INVALID_AK_XML).decode()
    assert decode_x_oss_err(header) == INVALID_AK_FIELDS


@pytest.mark.parametrize("value", ["", "!!!not base64!!!", base64.b64encode(b"plain").decode()])
def test_decode_x_oss_err_garbage(value: str) -> None:
    assert decode_x_oss_err(value) == {}


def test_head_error_from_x_oss_err_header() -> None:
    headers = httpx.Headers(
        {"X-Oss-Err": base64.b64encode(INVALID_AK_XML).decode(), "X-Oss-Request-Id": "other"}
    )
    err = make_service_error(403, headers, b"")
    assert type(err) is ServiceError
    assert err.status == 403
    assert err.code == "InvalidAccessKeyId"
    assert err.message == INVALID_AK_FIELDS["Message"]
    assert err.request_id == "id-1234"
    assert err.ec == "0002-00000902"
    assert err.host_id == "oss-cn-hangzhou.aliyuncs.com"
    assert err.details == INVALID_AK_FIELDS


def test_make_service_error_from_body() -> None:
    err = make_service_error(403, {"x-oss-request-id": "hdr-id", "x-oss-ec": "hdr-ec"},
                             INVALID_AK_XML)
    assert type(err) is ServiceError
    assert (err.code, err.request_id, err.ec) == ("InvalidAccessKeyId", "id-1234", "0002-00000902")
    assert err.details["OSSAccessKeyId"] == "ak"
    assert err.details["RecommendDoc"] == INVALID_AK_FIELDS["RecommendDoc"]
    text = str(err)
    assert "403" in text
    assert "InvalidAccessKeyId" in text
    assert "id-1234" in text


def test_request_id_and_ec_fall_back_to_headers() -> None:
    body = (
        b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
        b"</Error>"
    )
    headers = httpx.Headers(
        {"X-Oss-Request-Id": "5C3D9175B6FC201293AD4890", "X-Oss-Ec": "0026-00000001"}
    )
    err = make_service_error(404, headers, body)
    assert err.code == "NoSuchKey"
    assert err.request_id == "5C3D9175B6FC201293AD4890"
    assert err.ec == "0026-00000001"
    assert "5C3D9175B6FC201293AD4890" in str(err)


def test_no_request_id_anywhere() -> None:
    err = make_service_error(500, {}, b"<Error><Code>InternalError</Code></Error>")
    assert err.code == "InternalError"
    assert err.request_id is None
    assert err.ec is None


def test_html_body_gives_snippet_and_empty_code() -> None:
    err = make_service_error(502, {"x-oss-request-id": "rid"}, HTML_502)
    assert type(err) is ServiceError
    assert err.code == ""
    assert err.status == 502
    assert "502 Bad Gateway" in err.message
    assert "502 Bad Gateway" in str(err)
    assert err.request_id == "rid"


def test_huge_html_body_snippet_is_bounded() -> None:
    body = b"<html><body>" + b"A" * 100_000 + b"</body></html>"
    err = make_service_error(500, {}, body)
    assert err.code == ""
    assert 0 < len(err.message) <= 1000
    assert len(str(err)) <= 1200


# --------------------------------------------------------------------------- 203 / CallbackError


def test_203_with_result_is_callback_error() -> None:
    stored = _stored()
    err = make_service_error(203, {"x-oss-request-id": "587C81A125F797621829923D"},
                             CALLBACK_FAILED_XML, result=stored)
    assert isinstance(err, CallbackError)
    assert isinstance(err, ServiceError)
    assert isinstance(err, OSSError)
    assert err.result is stored
    assert err.status == 203
    assert err.code == "CallbackFailed"
    assert err.message == "Response body is not valid json format."
    assert err.host_id == "bucket.oss-cn-hangzhou.aliyuncs.com"
    text = str(err)
    assert "stored" in text
    assert "photos/cat.jpg" in text
    assert "Response body is not valid json format." in text


def test_203_with_empty_body_still_callback_failed() -> None:
    err = make_service_error(203, {}, b"", result=_stored())
    assert isinstance(err, CallbackError)
    assert err.code == "CallbackFailed"
    assert "stored" in str(err)


def test_203_without_a_result_is_not_labelled_callback_failed() -> None:
    err = make_service_error(203, {"x-oss-request-id": "5C09"}, b"")
    assert type(err) is ServiceError
    assert err.code == ""
    assert "CallbackFailed" not in str(err)
    assert "carried no callback" in str(err)
    assert err.request_id == "5C09"


def test_permanent_redirect_says_which_endpoint_to_use() -> None:
    err = make_service_error(301, {}, PERMANENT_REDIRECT_XML)
    assert (err.status, err.code) == (301, "PermanentRedirect")
    assert err.hint is not None and "oss-cn-beijing.aliyuncs.com" in err.hint
    assert str(err).endswith(
        "create the client with endpoint='https://oss-cn-beijing.aliyuncs.com', "
        "region='cn-beijing'")


def test_permanent_redirect_from_x_oss_err_on_head() -> None:
    header = base64.b64encode(PERMANENT_REDIRECT_XML).decode()
    err = make_service_error(301, {"x-oss-err": header}, b"")
    assert "region='cn-beijing'" in str(err)


@pytest.mark.parametrize(("location", "expected"), [
    ("https://b.oss-cn-shanghai.aliyuncs.com/k", "endpoint='https://b.oss-cn-shanghai"
                                                  ".aliyuncs.com'"),
    ("/login?next=/k", "redirects to /login?next=/k"),
    ("https://sso.example/" + "x" * 300, "..."),
])
def test_a_redirect_names_its_location(location: str, expected: str) -> None:
    err = make_service_error(302, {"location": location}, b"<html>Found</html>")
    assert expected in str(err)
    assert "does not follow redirects" in str(err)
    assert len(str(err)) < 700


def test_object_too_large_is_a_client_error_with_its_sizes() -> None:
    err = ObjectTooLargeError("too big", key="k", size=9, max_size=8)
    assert isinstance(err, ClientError)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.key, clone.size, clone.max_size, str(clone)) == ("k", 9, 8, "too big")


def test_callback_error_is_catchable_as_service_error() -> None:
    with pytest.raises(ServiceError) as exc:
        raise make_service_error(203, {}, CALLBACK_FAILED_XML, result=_stored())
    assert exc.value.result.etag == "D8E8FCA2DC0F896FD7CB4CB0031BA249"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- over the wire
# The same documented samples as OSS's answers to a default-built client, under respx.

BASE = "https://examplebucket.oss-cn-hangzhou.aliyuncs.com"


def _client() -> AsyncClient:
    return AsyncClient("https://oss-cn-hangzhou.aliyuncs.com", "ak", "sk",
                       retry=RetryPolicy.no_wait())


@respx.mock
async def test_documented_error_sample_over_the_wire() -> None:
    route = respx.put(f"{BASE}/k").respond(403, content=INVALID_AK_XML, headers={
        "content-type": "application/xml", "x-oss-request-id": "id-1234",
        "x-oss-ec": "0002-00000902"})
    async with _client() as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("examplebucket").put_object("k", b"x")
    assert route.call_count == 1  # a 403 is not retried
    err = info.value
    assert type(err) is ServiceError
    assert (err.status, err.code, err.request_id, err.ec, err.host_id) == (
        403, "InvalidAccessKeyId", "id-1234", "0002-00000902", "oss-cn-hangzhou.aliyuncs.com")
    assert err.details == INVALID_AK_FIELDS


@respx.mock
async def test_head_error_over_the_wire_comes_from_x_oss_err() -> None:
    respx.head(f"{BASE}/k").respond(403, headers={
        "x-oss-err": base64.b64encode(INVALID_AK_XML).decode(), "x-oss-request-id": "other"})
    async with _client() as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("examplebucket").head_object("k")
    assert info.value.details == INVALID_AK_FIELDS
    assert info.value.request_id == "id-1234"


@respx.mock
async def test_html_502_from_a_proxy_over_the_wire_is_retried_then_a_service_error() -> None:
    route = respx.get(f"{BASE}/k").respond(502, content=HTML_502, headers={
        "content-type": "text/html", "x-oss-request-id": "rid"})
    async with _client() as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("examplebucket").get_object("k")
    assert route.call_count == 3  # 5xx: every attempt of the policy
    assert type(info.value) is ServiceError
    assert (info.value.status, info.value.code, info.value.request_id) == (502, "", "rid")
    assert "502 Bad Gateway" in info.value.message


@respx.mock
async def test_callback_failed_on_complete_over_the_wire_carries_the_upload_id() -> None:
    route = respx.post(f"{BASE}/k", params={"uploadId": "UPLOAD-1"}).respond(
        203, content=CALLBACK_FAILED_XML,
        headers={"etag": '"3349DC700140D7F86A0784842780AAAA-2"',
                 "x-oss-request-id": "587C81A125F797621829923D"})
    async with _client() as client:
        with pytest.raises(CallbackError) as info:
            await client.get_bucket("examplebucket").complete_multipart_upload(
                "k", "UPLOAD-1", [(2, "B"), (1, "A")],
                callback=Callback(url="http://cb.example.com/hook"))
    assert route.call_count == 1  # stored: never retried
    request = route.calls.last.request
    parts = ET.fromstring(request.content).iter("Part")
    assert [(p.findtext("PartNumber"), p.findtext("ETag")) for p in parts] == [
        ("1", '"A"'), ("2", '"B"')]  # ascending, ETags quoted
    assert "x-oss-callback" in request.headers
    err = info.value
    assert err.code == "CallbackFailed"
    assert err.message == "Response body is not valid json format."
    assert err.result.upload_id == "UPLOAD-1"
    assert err.result.etag == "3349DC700140D7F86A0784842780AAAA-2"
    assert err.result.callback_status == 203


# --------------------------------------------------------------------------- pickling, str


def _all_errors() -> list[BaseException]:
    return [
        make_service_error(403, {"x-oss-ec": "0002-00000902"}, INVALID_AK_XML),
        make_service_error(203, {}, CALLBACK_FAILED_XML, result=_stored()),
        make_service_error(502, {}, HTML_502),
        OSSError("root"),
        RequestError("connection reset"),
        ClientError("client side"),
        CheckpointError("corrupt checkpoint"),
        FileChangedError("file changed"),
        ResponseError("HTML instead of XML"),
        InconsistentError(
            "crc mismatch", client_crc=1, server_crc=2, request_id="5C3D9175B6FC201293AD4890"
        ),
        make_service_error(301, {}, PERMANENT_REDIRECT_XML),
        make_service_error(203, {}, b""),
        ObjectTooLargeError("object 'k' is 9 bytes", key="k", size=9, max_size=8),
    ]


@pytest.mark.parametrize("err", _all_errors(), ids=lambda e: type(e).__name__)
def test_errors_pickle_round_trip(err: BaseException) -> None:
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert str(clone) == str(err)
    assert vars(clone) == vars(err)


def test_pickled_service_error_keeps_fields() -> None:
    err = make_service_error(403, {}, INVALID_AK_XML)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.status, clone.code, clone.message, clone.request_id, clone.ec, clone.host_id) == (
        403, "InvalidAccessKeyId", INVALID_AK_FIELDS["Message"], "id-1234", "0002-00000902",
        "oss-cn-hangzhou.aliyuncs.com",
    )
    assert clone.details == INVALID_AK_FIELDS


def test_pickled_callback_error_keeps_result() -> None:
    err = make_service_error(203, {}, CALLBACK_FAILED_XML, result=_stored())
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, CallbackError)
    assert clone.result == _stored()


@pytest.mark.parametrize("err", _all_errors(), ids=lambda e: type(e).__name__)
def test_str_is_one_line(err: BaseException) -> None:
    text = str(err)
    assert text
    assert "\n" not in text
    assert "\r" not in text


def test_str_is_one_line_even_for_multiline_message() -> None:
    body = b"<Error><Code>InvalidArgument</Code><Message>first line\nsecond line</Message></Error>"
    text = str(make_service_error(400, {}, body))
    assert "\n" not in text
    assert "first line" in text
    assert "second line" in text


def test_repr_names_class_and_code() -> None:
    err = make_service_error(403, {}, INVALID_AK_XML)
    assert repr(err).startswith("ServiceError(")
    assert "InvalidAccessKeyId" in repr(err)


# --------------------------------------------------------------------------- Credentials

SECRET = "S3cr3tAccessKeySecretValue"
TOKEN = "CAIS-very-secret-sts-token"


def test_credentials_repr_hides_secret_and_token() -> None:
    creds = Credentials(access_key_id="LTAI5tExampleKeyId", access_key_secret=SECRET,
                        security_token=TOKEN)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        assert SECRET not in text
        assert TOKEN not in text
    assert "LTAI5tExampleKeyId" in repr(creds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"access_key_id": "", "access_key_secret": "s"},
        {"access_key_id": "a", "access_key_secret": ""},
        {"access_key_id": " a", "access_key_secret": "s"},
        {"access_key_id": "a", "access_key_secret": "s\n"},
    ],
)
def test_credentials_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="access_key"):
        Credentials(**kwargs)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_resolve_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "env-id")
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", "env-secret")
    clean_env.setenv("OSS_SESSION_TOKEN", "env-token")
    creds = Credentials.resolve()
    assert creds.access_key_id == "env-id"
    assert creds.access_key_secret == "env-secret"
    assert creds.security_token == "env-token"


def test_resolve_arguments_win_over_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "env-id")
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", "env-secret")
    clean_env.setenv("OSS_SESSION_TOKEN", "env-token")
    creds = Credentials.resolve("arg-id", "arg-secret", "arg-token")
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == (
        "arg-id", "arg-secret", "arg-token"
    )
    # Mixed: id from the argument, the rest from the environment.
    creds = Credentials.resolve(access_key_id="arg-id")
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == (
        "arg-id", "env-secret", "env-token"
    )


def test_resolve_without_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "env-id")
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", "env-secret")
    assert Credentials.resolve().security_token is None
    clean_env.setenv("OSS_SESSION_TOKEN", "")
    assert Credentials.resolve().security_token is None


def test_resolve_missing_everything_names_both_variables(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_ID") as exc:
        Credentials.resolve()
    assert "OSS_ACCESS_KEY_SECRET" in str(exc.value)


def test_resolve_missing_secret_names_it_and_hides_nothing_secret(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "env-id")
    clean_env.setenv("OSS_SESSION_TOKEN", TOKEN)
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_SECRET") as exc:
        Credentials.resolve()
    assert TOKEN not in str(exc.value)


def test_resolve_missing_id_does_not_leak_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", SECRET)
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_ID") as exc:
        Credentials.resolve()
    assert SECRET not in str(exc.value)


def test_resolve_empty_env_values_count_as_missing(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "")
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", "")
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_ID"):
        Credentials.resolve()


def test_resolve_explicit_environ_mapping(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OSS_ACCESS_KEY_ID", "process-id")
    clean_env.setenv("OSS_ACCESS_KEY_SECRET", "process-secret")
    creds = Credentials.resolve(
        environ={"OSS_ACCESS_KEY_ID": "map-id", "OSS_ACCESS_KEY_SECRET": "map-secret"}
    )
    assert (creds.access_key_id, creds.access_key_secret) == ("map-id", "map-secret")
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_SECRET"):
        Credentials.resolve(environ={"OSS_ACCESS_KEY_ID": "map-id"})


# --------------------------------------------------------------------------- Endpoint


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "region", "path_style"),
    [
        ("oss-cn-hangzhou.aliyuncs.com", "https", "oss-cn-hangzhou.aliyuncs.com", None,
         "cn-hangzhou", False),
        ("https://oss-cn-hangzhou.aliyuncs.com", "https", "oss-cn-hangzhou.aliyuncs.com", None,
         "cn-hangzhou", False),
        ("http://oss-cn-shanghai.aliyuncs.com/", "http", "oss-cn-shanghai.aliyuncs.com", None,
         "cn-shanghai", False),
        ("https://oss-cn-hangzhou-internal.aliyuncs.com", "https",
         "oss-cn-hangzhou-internal.aliyuncs.com", None, "cn-hangzhou", False),
        ("https://OSS-US-WEST-1.ALIYUNCS.COM", "https", "oss-us-west-1.aliyuncs.com", None,
         "us-west-1", False),
        ("https://cn-hangzhou.oss.aliyuncs.com", "https", "cn-hangzhou.oss.aliyuncs.com", None,
         "cn-hangzhou", False),
        ("https://oss-accelerate.aliyuncs.com", "https", "oss-accelerate.aliyuncs.com", None,
         None, False),
        ("https://files.example.com", "https", "files.example.com", None, None, False),
        ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, None, True),
        ("127.0.0.1:9000", "https", "127.0.0.1", 9000, None, True),
        ("http://localhost:8080", "http", "localhost", 8080, None, True),
        ("http://[::1]:9000", "http", "[::1]", 9000, None, True),
        ("  http://10.0.0.5  ", "http", "10.0.0.5", None, None, True),
    ],
)
def test_endpoint_parse(text: str, scheme: str, host: str, port: int | None,
                        region: str | None, path_style: bool) -> None:
    ep = Endpoint.parse(text)
    assert (ep.scheme, ep.host, ep.port, ep.region, ep.path_style) == (
        scheme, host, port, region, path_style
    )


@pytest.mark.parametrize(
    "text", ["https://oss-proxy.example.com", "https://oss-files.mycompany.cn:8443"]
)
def test_endpoint_region_not_guessed_from_foreign_domains(text: str) -> None:
    # Only Alibaba Cloud OSS host names carry a region.  A custom domain whose first label
    # happens to start with "oss-" has no derivable region: guessing "proxy"/"files" would
    # sign V4 requests for a region that doesn't exist (SignatureDoesNotMatch at run time)
    # instead of asking for region=.
    ep = Endpoint.parse(text)
    assert ep.region is None
    assert Endpoint.parse(text, region="cn-hangzhou").region == "cn-hangzhou"


def test_endpoint_explicit_region_and_style_win() -> None:
    ep = Endpoint.parse("http://127.0.0.1:9000", region="cn-beijing", path_style=False)
    assert ep.region == "cn-beijing"
    assert ep.path_style is False
    ep = Endpoint.parse("oss-cn-hangzhou.aliyuncs.com", region="cn-shenzhen", path_style=True)
    assert ep.region == "cn-shenzhen"
    assert ep.path_style is True


def test_endpoint_urls() -> None:
    ep = Endpoint.parse("oss-cn-hangzhou.aliyuncs.com")
    assert ep.url("bucket", "a b/c+d") == (
        "https://bucket.oss-cn-hangzhou.aliyuncs.com/a%20b/c%2Bd"
    )
    assert ep.url("bucket", "k", [("uploads", "")]) == (
        "https://bucket.oss-cn-hangzhou.aliyuncs.com/k?uploads"
    )
    local = Endpoint.parse("http://127.0.0.1:9000")
    assert local.url("bucket", "k", [("partNumber", "1"), ("uploadId", "a/b")]) == (
        "http://127.0.0.1:9000/bucket/k?partNumber=1&uploadId=a%2Fb"
    )
    assert str(local) == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "endpoint"),
        ("   ", "endpoint"),
        ("ftp://oss-cn-hangzhou.aliyuncs.com", "scheme"),
        ("https://oss-cn-hangzhou.aliyuncs.com/bucket", "path"),
        ("https://oss-cn-hangzhou.aliyuncs.com?x=1", "query"),
        ("https://user:pass@oss-cn-hangzhou.aliyuncs.com", "credentials"),
        ("https://oss-cn-hangzhou.aliyuncs.com:99999", "port"),
        ("https://oss-cn-hangzhou.aliyuncs.com:abc", "port"),
        ("https://", "host"),
    ],
)
def test_endpoint_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Endpoint.parse(text)


def test_endpoint_error_does_not_echo_password() -> None:
    with pytest.raises(ValueError, match="credentials") as exc:
        Endpoint.parse("https://user:hunter2@oss-cn-hangzhou.aliyuncs.com")
    assert "hunter2" not in str(exc.value)


# --------------------------------------------------------------------------- keys, buckets


def test_validate_key_accepts() -> None:
    assert validate_key("a") == "a"
    assert validate_key("dir/sub/file.txt") == "dir/sub/file.txt"
    assert validate_key("k" * 1023) == "k" * 1023
    assert validate_key("杭" * 341) == "杭" * 341  # 1023 UTF-8 bytes


def test_validate_key_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_key("")


@pytest.mark.parametrize("key", ["k" * 1024, "杭" * 342, "😀" * 256])
def test_validate_key_too_long(key: str) -> None:
    with pytest.raises(ValueError, match="1023") as exc:
        validate_key(key)
    assert "bytes" in str(exc.value)
    assert str(len(key.encode())) in str(exc.value)


@pytest.mark.parametrize("key", ["/leading", "\\leading"])
def test_validate_key_leading_slash(key: str) -> None:
    with pytest.raises(ValueError, match="start with") as exc:
        validate_key(key)
    assert "'/'" in str(exc.value)


@pytest.mark.parametrize("key", ["a\x00b", "a\nb", "a\rb"])
def test_validate_key_control_chars(key: str) -> None:
    with pytest.raises(ValueError, match=r"NUL|CR|LF"):
        validate_key(key)


def test_validate_key_nul_message() -> None:
    with pytest.raises(ValueError, match="NUL"):
        validate_key("bad\x00key")


def test_validate_key_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        validate_key("a\udc80b")


def test_validate_key_type() -> None:
    with pytest.raises(TypeError):
        validate_key(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("a/b/c", "a/b/c"),
        ("a//b///c/", "a//b///c/"),
        ("a+b", "a%2Bb"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("%2F", "%252F"),
        ("q?x#y&z=1", "q%3Fx%23y%26z%3D1"),
        ("杭州/😀", "%E6%9D%AD%E5%B7%9E/%F0%9F%98%80"),
        ("-_.~", "-_.~"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("a/./b", "a/%2E/b"),
        ("a/../b", "a/%2E%2E/b"),
        ("../x", "%2E%2E/x"),
        ("x/..", "x/%2E%2E"),
        ("...", "..."),
        ("a.b/.hidden/..dots", "a.b/.hidden/..dots"),
    ],
)
def test_encode_key(key: str, encoded: str) -> None:
    assert encode_key(key) == encoded


@pytest.mark.parametrize("name", ["abc", "my-bucket-1", "a" * 63, "0bucket"])
def test_validate_bucket_name_ok(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    "name", ["ab", "a" * 64, "-bucket", "bucket-", "Bucket", "my_bucket", "my.bucket", ""]
)
def test_validate_bucket_name_bad(name: str) -> None:
    with pytest.raises(ValueError, match="bucket name"):
        validate_bucket_name(name)
