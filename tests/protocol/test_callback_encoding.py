"""Callback parameter encoding (PROTOCOL.md §1.2, §4.4) and validation."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest

from oss_callback.protocol._callback import Callback

# [RB] spec/aliyun/oss/object_spec.rb "should encode callback" (PROTOCOL.md §4.4).
RB_ENCODED = (
    "eyJjYWxsYmFja1VybCI6Imh0dHA6Ly9hcHAuc2VydmVyLmNvbS9jYWxsYmFjaz9pZD0xJm5hbWU9JUU2JTlEJUFE"
    "JUU1JUI3JTlFIiwiY2FsbGJhY2tCb2R5IjoiaGVsbG8gd29ybGQiLCJjYWxsYmFja0JvZHlUeXBlIjoiYXBwbGlj"
    "YXRpb24veC13d3ctZm9ybS11cmxlbmNvZGVkIiwiY2FsbGJhY2tIb3N0Ijoic2VydmVyLmNvbSJ9"
)
RB_JSON = (
    '{"callbackUrl":"http://app.server.com/callback?id=1&name=%E6%9D%AD%E5%B7%9E",'
    '"callbackBody":"hello world","callbackBodyType":"application/x-www-form-urlencoded",'
    '"callbackHost":"server.com"}'
)
# [DOCS] Callback.md header example.
DOCS_CALLBACK_VAR = "eyJ4Om15X3ZhciI6ImZvci1jYWxsYmFjay10ZXN0In0="

MAX_ENCODED = 5 * 1024  # PROTOCOL.md §1.2: callback and callback-var must each be <= 5 KB


def _decode(value: str | None) -> str:
    assert value is not None
    return base64.b64decode(value, validate=True).decode("utf-8")


def rb_callback() -> Callback:
    return Callback(
        url="http://app.server.com/callback",
        query={"id": 1, "name": "杭州"},
        body="hello world",
        host="server.com",
    )


# --------------------------------------------------------------------------- vectors


def test_ruby_encoding_vector() -> None:
    cb = rb_callback()
    assert cb.encoded_callback == RB_ENCODED
    assert _decode(cb.encoded_callback) == RB_JSON
    assert cb.to_json() == json.loads(RB_JSON)
    assert list(cb.to_json()) == ["callbackUrl", "callbackBody", "callbackBodyType", "callbackHost"]


def test_ruby_vector_headers_without_variables() -> None:
    headers = rb_callback().to_headers()
    assert headers == {"x-oss-callback": RB_ENCODED}
    assert rb_callback().encoded_variables is None


def test_callback_var_vector() -> None:
    cb = Callback(
        url="http://app.server.com/callback",
        body="bucket=${bucket}&my_var=${x:my_var}",
        variables={"x:my_var": "for-callback-test"},
    )
    assert cb.encoded_variables == DOCS_CALLBACK_VAR
    assert _decode(DOCS_CALLBACK_VAR) == '{"x:my_var":"for-callback-test"}'
    headers = cb.to_headers()
    assert headers["x-oss-callback-var"] == DOCS_CALLBACK_VAR
    assert json.loads(_decode(headers["x-oss-callback"]))["callbackBody"] == (
        "bucket=${bucket}&my_var=${x:my_var}"
    )


def test_variables_numbers_become_strings() -> None:
    cb = Callback(url="http://a.example/cb", variables={"x:n": 5, "x:f": 1.5, "x:s": "杭州"})
    assert json.loads(_decode(cb.encoded_variables)) == {"x:n": "5", "x:f": "1.5", "x:s": "杭州"}


def test_json_body_type() -> None:
    body = '{"bucket":${bucket},"object":${object},"size":${size},"uid":${x:uid}}'
    cb = Callback(url="https://a.example/cb", body=body, body_type="application/json")
    decoded = json.loads(_decode(cb.encoded_callback))
    assert decoded["callbackBodyType"] == "application/json"
    assert decoded["callbackBody"] == body
    assert decoded["callbackUrl"] == "https://a.example/cb"
    assert "callbackHost" not in decoded


def test_default_body_type_is_form() -> None:
    decoded = json.loads(_decode(Callback(url="http://a.example/cb").encoded_callback))
    assert decoded["callbackBodyType"] == "application/x-www-form-urlencoded"
    assert decoded["callbackBody"]  # never empty
    assert decoded.get("callbackSNI", False) is False


def test_sni_is_a_json_boolean() -> None:
    cb = Callback(url="https://a.example/cb", sni=True)
    raw = _decode(cb.encoded_callback)
    # JSON `true`, not the string "true" (which OSS rejects: "The callback sni is invalid").
    assert '"callbackSNI":true' in raw
    assert json.loads(raw)["callbackSNI"] is True


@pytest.mark.parametrize("value", ["true", 1, 0, "false"])
def test_sni_must_be_bool(value: Any) -> None:
    with pytest.raises(TypeError, match="sni"):
        Callback(url="https://a.example/cb", sni=value)


def test_multiple_urls() -> None:
    urls = "http://a.example/cb;https://b.example:8443/cb2;http://10.0.0.1/x"
    cb = Callback(url=urls)
    assert json.loads(_decode(cb.encoded_callback))["callbackUrl"] == urls


def test_multiple_urls_each_get_the_query() -> None:
    cb = Callback(url="http://a.example/cb;http://b.example/cb", query={"id": "7", "k": "a b&c"})
    full = json.loads(_decode(cb.encoded_callback))["callbackUrl"]
    parts = full.split(";")
    assert len(parts) == 2
    for part, host in zip(parts, ["a.example", "b.example"], strict=True):
        split = urlsplit(part)
        assert split.hostname == host
        assert split.path == "/cb"
        assert parse_qsl(split.query) == [("id", "7"), ("k", "a b&c")]


def test_five_urls_allowed_six_rejected() -> None:
    five = ";".join(f"http://h{i}.example/cb" for i in range(5))
    assert json.loads(_decode(Callback(url=five).encoded_callback))["callbackUrl"] == five
    with pytest.raises(ValueError, match=r"Callback\.url"):
        Callback(url=five + ";http://h5.example/cb")


def test_non_ascii_url_is_percent_encoded() -> None:
    cb = Callback(url="http://a.example/回调")
    url = json.loads(_decode(cb.encoded_callback))["callbackUrl"]
    assert url == "http://a.example/%E5%9B%9E%E8%B0%83"
    assert url.isascii()


def test_frozen() -> None:
    cb = rb_callback()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cb.body = "other"  # type: ignore[misc]


def test_query_is_not_shared_with_caller() -> None:
    query = {"id": "1"}
    cb = Callback(url="http://a.example/cb", query=query)
    query["id"] = "2"
    assert json.loads(_decode(cb.encoded_callback))["callbackUrl"] == "http://a.example/cb?id=1"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "url",
    [
        "http://app.server.com/callback?id=1",
        "http://app.server.com/callback?",
        "http://a.example/cb;http://b.example/cb?x=1",
    ],
)
def test_url_with_query_string_rejected(url: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.url") as exc:
        Callback(url=url)
    assert "query" in str(exc.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a.example/cb",
        "file:///etc/passwd",
        "a.example/cb",
        "//a.example/cb",
        "javascript:alert(1)",
        "http://",
        "",
        "   ",
        "http://a.example/c b",
        "http://10.101.166.30:test/cb",
    ],
)
def test_bad_urls_rejected(url: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.url"):
        Callback(url=url)


def test_empty_body_rejected() -> None:
    with pytest.raises(ValueError, match=r"Callback\.body"):
        Callback(url="http://a.example/cb", body="")


@pytest.mark.parametrize(
    "body",
    [
        "bucket=${ bad}",
        "a=${}",
        "a=${x:UPPER}",
        "a=${bucket name}",
        "a=${1abc}",
        "a=${x:}",
    ],
)
def test_bad_variable_syntax_rejected(body: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.body"):
        Callback(url="http://a.example/cb", body=body)


@pytest.mark.parametrize("body", ["bucket=${bucket", "a=${bucket}&b=${x:v", "${"])
def test_unterminated_variable_rejected(body: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.body") as exc:
        Callback(url="http://a.example/cb", body=body)
    assert "${" in str(exc.value)


@pytest.mark.parametrize(
    "body",
    [
        "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}"
        "&imageInfo.height=${imageInfo.height}&imageInfo.width=${imageInfo.width}"
        "&imageInfo.format=${imageInfo.format}&my_var=${x:my_var}",
        '{"mimeType":${mimeType},"size":${size}}',
        "price is $5 {literal}",
        "crc=${crc64}&md5=${contentMd5}&op=${operation}",
    ],
)
def test_documented_bodies_accepted(body: str) -> None:
    cb = Callback(url="http://a.example/cb", body=body)
    assert json.loads(_decode(cb.encoded_callback))["callbackBody"] == body


@pytest.mark.parametrize(
    "body_type", ["text/plain", "application/JSON", "", "application/xml", "json"]
)
def test_bad_body_type_rejected(body_type: Any) -> None:
    with pytest.raises(ValueError, match=r"Callback\.body_type"):
        Callback(url="http://a.example/cb", body_type=body_type)


@pytest.mark.parametrize("key", ["var1", "X:var1", "x:Var1", "x:VAR", "y:var", "x:", "x: a"])
def test_bad_variable_keys_rejected(key: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.variables") as exc:
        Callback(url="http://a.example/cb", variables={key: "v"})
    assert repr(key) in str(exc.value)


@pytest.mark.parametrize("value", [True, None, ["a"], {"a": 1}, b"bytes"])
def test_bad_variable_values_rejected(value: Any) -> None:
    with pytest.raises(TypeError):
        Callback(url="http://a.example/cb", variables={"x:a": value})


@pytest.mark.parametrize(
    "host", ["server.com/path", "http://server.com", "server.com?x=1", "ser ver.com", ""]
)
def test_host_with_path_rejected(host: str) -> None:
    with pytest.raises(ValueError, match=r"Callback\.host"):
        Callback(url="http://a.example/cb", host=host)


def test_host_with_port_accepted() -> None:
    cb = Callback(url="http://10.0.0.1/cb", host="server.com:8080")
    assert json.loads(_decode(cb.encoded_callback))["callbackHost"] == "server.com:8080"


def _json_overhead() -> int:
    # Length of the compact JSON for url http://a.example/cb with an empty body.
    return len(
        json.dumps(
            {
                "callbackUrl": "http://a.example/cb",
                "callbackBody": "",
                "callbackBodyType": "application/x-www-form-urlencoded",
            },
            separators=(",", ":"),
        )
    )


def test_callback_size_limit_boundary() -> None:
    # Base64 of n bytes is 4*ceil(n/3) long: 3840 raw bytes are exactly 5120 encoded.
    body_len = MAX_ENCODED // 4 * 3 - _json_overhead()
    ok = Callback(url="http://a.example/cb", body="b" * body_len)
    assert len(ok.encoded_callback) == MAX_ENCODED
    with pytest.raises(ValueError, match=r"Callback\.body") as exc:
        Callback(url="http://a.example/cb", body="b" * (body_len + 1))
    assert "large" in str(exc.value)


def test_callback_too_large_via_query() -> None:
    with pytest.raises(ValueError, match="too large"):
        Callback(url="http://a.example/cb", query={"q": "x" * 6000})


def test_callback_too_large_non_ascii_counts_utf8_bytes() -> None:
    # 1300 CJK characters are 3900 UTF-8 bytes: over the limit once encoded.
    with pytest.raises(ValueError, match=r"Callback\.body"):
        Callback(url="http://a.example/cb", body="杭" * 1300)


def test_variables_size_limit() -> None:
    overhead = len('{"x:a":""}')
    value_len = MAX_ENCODED // 4 * 3 - overhead
    ok = Callback(url="http://a.example/cb", variables={"x:a": "v" * value_len})
    assert len(ok.encoded_variables) == MAX_ENCODED  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Callback\.variables"):
        Callback(url="http://a.example/cb", variables={"x:a": "v" * (value_len + 1)})
