"""Request signing against the published test vectors (PROTOCOL.md §4.1 and §4.2), verbatim.

Every expected string below is copied from PROTOCOL.md (which took them from the official
SDKs' unit tests and the OSS docs).  Both the intermediate strings (StringToSign, canonical
request) and the final ``Authorization`` are checked.

Presigned-URL vectors (V1 presigned, V4 Q1-Q3) are not tested: ``oss_callback.protocol._signing``
implements header authentication only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest

from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._signing import (
    sign_v1,
    sign_v4,
    v1_canonical_resource,
    v1_signature,
    v1_string_to_sign,
    v4_canonical_request,
    v4_scope,
    v4_signature,
    v4_string_to_sign,
)

# --------------------------------------------------------------------------- V1 A
# [V2] tests/unit/signer/test_v1.py: ak=ak, sk=sk, x-oss-date on every request.

A_DATE = "Wed, 28 Dec 2022 10:27:41 GMT"
A_CREDS = Credentials(access_key_id="ak", access_key_secret="sk")


def _a_headers_full() -> dict[str, str]:
    return {
        "x-oss-date": A_DATE,
        "Content-MD5": "eB5eJF1ptWaXm4bijSPyxw==",
        "Content-Type": "text/html",
        "x-oss-meta-author": "alice",
        "x-oss-meta-magic": "abracadabra",
    }


A_CASES = [
    pytest.param(
        "PUT",
        "examplebucket",
        "nelson",
        [],
        _a_headers_full,
        "PUT\neB5eJF1ptWaXm4bijSPyxw==\ntext/html\nWed, 28 Dec 2022 10:27:41 GMT\n"
        "x-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\nx-oss-meta-author:alice\n"
        "x-oss-meta-magic:abracadabra\n/examplebucket/nelson",
        "OSS ak:kSHKmLxlyEAKtZPkJhG9bZb5k7M=",
        id="A1-put-object",
    ),
    pytest.param(
        "PUT",
        "examplebucket",
        "nelson",
        [("acl", "")],
        _a_headers_full,
        "PUT\neB5eJF1ptWaXm4bijSPyxw==\ntext/html\nWed, 28 Dec 2022 10:27:41 GMT\n"
        "x-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\nx-oss-meta-author:alice\n"
        "x-oss-meta-magic:abracadabra\n/examplebucket/nelson?acl",
        "OSS ak:/afkugFbmWDQ967j1vr6zygBLQk=",
        id="A2-put-object-acl",
    ),
    pytest.param(
        "GET",
        "examplebucket",
        None,
        [("resourceGroup", ""), ("non-resousce", "null")],
        lambda: {"x-oss-date": A_DATE},
        "GET\n\n\nWed, 28 Dec 2022 10:27:41 GMT\nx-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\n"
        "/examplebucket/?resourceGroup",
        "OSS ak:vkQmfuUDyi1uDi3bKt67oemssIs=",
        id="A3-non-subresource-dropped",
    ),
    pytest.param(
        "GET",
        "examplebucket",
        None,
        [("resourceGroup", ""), ("acl", "")],
        lambda: {"x-oss-date": A_DATE},
        "GET\n\n\nWed, 28 Dec 2022 10:27:41 GMT\nx-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\n"
        "/examplebucket/?acl&resourceGroup",
        "OSS ak:x3E5TgOvl/i7PN618s5mEvpJDYk=",
        id="A4-subresources-sorted",
    ),
]


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "make_headers", "expected_sts", "expected_auth"),
    A_CASES,
)
def test_v1_vectors_a(method: str, bucket: str | None, key: str | None,
                      query: list[tuple[str, str]], make_headers: Callable[[], dict[str, str]],
                      expected_sts: str, expected_auth: str) -> None:
    headers = make_headers()
    assert v1_string_to_sign(method, bucket, key, query, headers) == expected_sts
    assert v1_signature("sk", expected_sts) == expected_auth.split(":", 1)[1]

    # sign_v1 adds Date (from `now`), but x-oss-date wins in the StringToSign.
    now = parsedate_to_datetime(A_DATE) + timedelta(hours=5)
    returned = sign_v1(method, bucket, key, query, headers, A_CREDS, now)
    assert returned == expected_sts
    assert headers["authorization"] == expected_auth
    assert [k for k in headers if k.lower() == "authorization"] == ["authorization"]


def test_v1_vector_a_resource_strings() -> None:
    # The CanonicalizedResource parts of the A vectors, on their own.
    assert v1_canonical_resource("examplebucket", "nelson", []) == "/examplebucket/nelson"
    assert v1_canonical_resource("examplebucket", "nelson", [("acl", "")]) == (
        "/examplebucket/nelson?acl"
    )
    assert v1_canonical_resource(
        "examplebucket", None, [("resourceGroup", ""), ("non-resousce", "null")]
    ) == "/examplebucket/?resourceGroup"
    assert v1_canonical_resource(
        "examplebucket", None, [("resourceGroup", ""), ("acl", "")]
    ) == "/examplebucket/?acl&resourceGroup"


def test_v1_vector_a_header_name_case_is_irrelevant() -> None:
    # Same request as A1 with differently-cased header names: same StringToSign.
    headers = {
        "X-OSS-DATE": A_DATE,
        "content-md5": "eB5eJF1ptWaXm4bijSPyxw==",
        "CONTENT-TYPE": "text/html",
        "X-Oss-Meta-Author": "alice",
        "x-OSS-meta-MAGIC": "abracadabra",
    }
    sts = v1_string_to_sign("put", "examplebucket", "nelson", [], headers)
    assert sts == (
        "PUT\neB5eJF1ptWaXm4bijSPyxw==\ntext/html\nWed, 28 Dec 2022 10:27:41 GMT\n"
        "x-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\nx-oss-meta-author:alice\n"
        "x-oss-meta-magic:abracadabra\n/examplebucket/nelson"
    )
    assert v1_signature("sk", sts) == "kSHKmLxlyEAKtZPkJhG9bZb5k7M="


# --------------------------------------------------------------------------- V1 B
# [RB] spec/aliyun/oss/util_spec.rb: secret "helloworld", plain resources.

B_SECRET = "helloworld"
B_DATE = "Fri, 30 Oct 2015 07:21:00 GMT"


def test_v1_vector_b_get_root() -> None:
    sts = v1_string_to_sign("GET", None, None, [], {"Date": B_DATE})
    assert sts == "GET\n\n\nFri, 30 Oct 2015 07:21:00 GMT\n/"
    assert v1_signature(B_SECRET, sts) == "u8QKAAj/axKX4JhHXa5DYfYSPxE="

    creds = Credentials(access_key_id="id", access_key_secret=B_SECRET)
    headers: dict[str, str] = {}
    assert sign_v1("GET", None, None, [], headers, creds, parsedate_to_datetime(B_DATE)) == sts
    assert headers["date"] == B_DATE
    assert headers["authorization"] == "OSS id:u8QKAAj/axKX4JhHXa5DYfYSPxE="


def test_v1_vector_b_put_bucket_plain_resource() -> None:
    # The Ruby helper signs the plain resource "/bucket" (no trailing slash).  Our builder
    # always writes "/bucket/" for a bucket-level request (the documented OSS form), so this
    # row can only be checked through v1_signature on the given StringToSign.
    sts = "PUT\n\n\nFri, 30 Oct 2015 07:21:00 GMT\n/bucket"
    assert v1_signature(B_SECRET, sts) == "lMKrMCJIuGygd8UsdMA+S0QOAsQ="
    # ...and the builder's bucket-level resource is the documented "/bucket/" form.
    assert v1_canonical_resource("bucket", None, []) == "/bucket/"


def test_v1_vector_b_copy_source_header() -> None:
    headers = {"Date": B_DATE, "x-oss-copy-source": "/bucket/object-old"}
    sts = v1_string_to_sign("PUT", "bucket", "object-new", [], headers)
    assert sts == (
        "PUT\n\n\nFri, 30 Oct 2015 07:21:00 GMT\nx-oss-copy-source:/bucket/object-old\n"
        "/bucket/object-new"
    )
    assert v1_signature(B_SECRET, sts) == "McYUmBaErN//yvE9voWRhCgvsIc="


def test_v1_vector_b_append_position() -> None:
    # sub_res {append=>nil, position=>0}; given in the opposite order to check sorting.
    sts = v1_string_to_sign(
        "PUT", "bucket", "object-new", [("position", "0"), ("append", "")], {"Date": B_DATE}
    )
    assert sts == "PUT\n\n\nFri, 30 Oct 2015 07:21:00 GMT\n/bucket/object-new?append&position=0"
    assert v1_signature(B_SECRET, sts) == "7Oh2wobzeg6dw/cWYbF/2m6s6qc="


# --------------------------------------------------------------------------- V1 C
# [DOCS] "Add a signature to the header.md".

C_CREDS = Credentials(
    access_key_id="44CF9590006BF252F707",
    access_key_secret="OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV",
)
C_DATE = "Thu, 17 Nov 2005 18:49:58 GMT"


def _c_headers(content_md5: str) -> dict[str, str]:
    return {
        "Content-Md5": content_md5,
        "Content-Type": "text/html",
        "Date": C_DATE,
        "X-OSS-Meta-Author": "foo@bar.com",
        "X-OSS-Magic": "abracadabra",
        "Host": "oss-example.oss-cn-hangzhou.aliyuncs.com",
    }


@pytest.mark.parametrize(
    ("content_md5", "expected_signature"),
    [
        # The doc's Python snippet value: matches the published signature.
        ("ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=", "26NBxoKdsyly4EDv6inkoDft/yA="),
        # The doc's HTTP sample value.
        ("eB5eJF1ptWaXm4bijSPyxw==", "hD208RWMpg77svXkQRwWXS+V5KQ="),
    ],
)
def test_v1_vector_c_docs_example(content_md5: str, expected_signature: str) -> None:
    headers = _c_headers(content_md5)
    expected_sts = (
        f"PUT\n{content_md5}\ntext/html\nThu, 17 Nov 2005 18:49:58 GMT\n"
        "x-oss-magic:abracadabra\nx-oss-meta-author:foo@bar.com\n/oss-example/nelson"
    )
    assert v1_string_to_sign("PUT", "oss-example", "nelson", [], headers) == expected_sts
    assert v1_signature(C_CREDS.access_key_secret, expected_sts) == expected_signature

    returned = sign_v1(
        "PUT", "oss-example", "nelson", [], headers, C_CREDS, parsedate_to_datetime(C_DATE)
    )
    assert returned == expected_sts
    assert headers["authorization"] == f"OSS 44CF9590006BF252F707:{expected_signature}"
    # sign_v1 replaced the caller's "Date" (any case) with exactly one date header.
    assert [k for k in headers if k.lower() == "date"] == ["date"]
    assert headers["date"] == C_DATE


def test_v1_vector_c_date_from_now_in_another_timezone() -> None:
    # `now` given in UTC+8 must still produce the GMT Date of the vector.
    headers = _c_headers("ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=")
    del headers["Date"]
    now = datetime(2005, 11, 18, 2, 49, 58, tzinfo=timezone(timedelta(hours=8)))
    sign_v1("PUT", "oss-example", "nelson", [], headers, C_CREDS, now)
    assert headers["date"] == C_DATE
    assert headers["authorization"] == "OSS 44CF9590006BF252F707:26NBxoKdsyly4EDv6inkoDft/yA="


def test_v1_sts_token_is_signed_as_x_oss_security_token() -> None:
    # Vector C plus an STS token: the token goes in x-oss-security-token, a canonical header.
    creds = Credentials(
        access_key_id=C_CREDS.access_key_id,
        access_key_secret=C_CREDS.access_key_secret,
        security_token="tok",
    )
    headers = _c_headers("ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=")
    sts = sign_v1(
        "PUT", "oss-example", "nelson", [], headers, creds, parsedate_to_datetime(C_DATE)
    )
    assert headers["x-oss-security-token"] == "tok"
    assert sts == (
        "PUT\nODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=\ntext/html\n"
        "Thu, 17 Nov 2005 18:49:58 GMT\nx-oss-magic:abracadabra\nx-oss-meta-author:foo@bar.com\n"
        "x-oss-security-token:tok\n/oss-example/nelson"
    )


# --------------------------------------------------------------------------- V4
# [V2] tests/unit/signer/test_v4.py: ak/sk, cn-hangzhou, PUT bucket/1234+-/123/1.txt.

V4_QUERY = [
    ("param1", "value1"),
    ("+param1", "value3"),
    ("|param1", "value4"),
    ("+param2", ""),
    ("|param2", ""),
    ("param2", ""),
]
V4_KEY = "1234+-/123/1.txt"


def _v4_headers() -> dict[str, str]:
    return {
        "x-oss-head1": "value",
        "abc": "value",
        "ZAbc": "value",
        "XYZ": "value",
        "content-type": "text/plain",
        "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
    }


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


H1_CANONICAL = (
    "PUT\n"
    "/bucket/1234%2B-/123/1.txt\n"
    "%2Bparam1=value3&%2Bparam2&%7Cparam1=value4&%7Cparam2&param1=value1&param2\n"
    "content-type:text/plain\n"
    "x-oss-content-sha256:UNSIGNED-PAYLOAD\n"
    "x-oss-date:20231216T162057Z\n"
    "x-oss-head1:value\n"
    "\n"
    "\n"
    "UNSIGNED-PAYLOAD"
)
H1_STS = (
    "OSS4-HMAC-SHA256\n20231216T162057Z\n20231216/cn-hangzhou/oss/aliyun_v4_request\n"
    "f4613657f1b108998e8dbd10a1aa5da621dc2c6e02c9ddec0f163664848704c4"
)
H1_AUTH = (
    "OSS4-HMAC-SHA256 Credential=ak/20231216/cn-hangzhou/oss/aliyun_v4_request,"
    "Signature=e21d18daa82167720f9b1047ae7e7f1ce7cb77a31e8203a7d5f4624fa0284afe"
)


def test_v4_h1_intermediate_strings() -> None:
    headers = {**_v4_headers(), "x-oss-date": "20231216T162057Z"}
    canonical = v4_canonical_request("PUT", "bucket", V4_KEY, V4_QUERY, headers)
    assert canonical == H1_CANONICAL
    scope = v4_scope("20231216T162057Z", "cn-hangzhou")
    assert scope == "20231216/cn-hangzhou/oss/aliyun_v4_request"
    sts = v4_string_to_sign(canonical, "20231216T162057Z", scope)
    assert sts == H1_STS
    assert v4_signature("sk", "20231216T162057Z", "cn-hangzhou", sts) == H1_AUTH.rsplit("=", 1)[1]
    # The date argument may also be the bare YYYYMMDD.
    assert v4_signature("sk", "20231216", "cn-hangzhou", sts) == H1_AUTH.rsplit("=", 1)[1]


def test_v4_h1_sign() -> None:
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    sts = sign_v4(
        "PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702743657), "cn-hangzhou"
    )
    assert sts == H1_STS
    assert headers["authorization"] == H1_AUTH
    assert headers["x-oss-date"] == "20231216T162057Z"
    assert headers["x-oss-content-sha256"] == "UNSIGNED-PAYLOAD"
    # The canonical request rebuilt from the signed headers is the documented one.
    assert v4_canonical_request("PUT", "bucket", V4_KEY, V4_QUERY, headers) == H1_CANONICAL


def test_v4_h1_query_order_is_irrelevant() -> None:
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    sign_v4(
        "PUT", "bucket", V4_KEY, list(reversed(V4_QUERY)), headers, creds, _utc(1702743657),
        "cn-hangzhou",
    )
    assert headers["authorization"] == H1_AUTH


def test_v4_h1_now_in_another_timezone() -> None:
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    now = _utc(1702743657).astimezone(timezone(timedelta(hours=-7, minutes=-30)))
    sign_v4("PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, now, "cn-hangzhou")
    assert headers["x-oss-date"] == "20231216T162057Z"
    assert headers["authorization"] == H1_AUTH


def test_v4_h2_sts_token() -> None:
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk", security_token="token")
    sts = sign_v4(
        "PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702784856), "cn-hangzhou"
    )
    assert headers["x-oss-security-token"] == "token"
    # H1's canonical request with the new date and x-oss-security-token:token added.
    expected_canonical = (
        "PUT\n"
        "/bucket/1234%2B-/123/1.txt\n"
        "%2Bparam1=value3&%2Bparam2&%7Cparam1=value4&%7Cparam2&param1=value1&param2\n"
        "content-type:text/plain\n"
        "x-oss-content-sha256:UNSIGNED-PAYLOAD\n"
        "x-oss-date:20231217T034736Z\n"
        "x-oss-head1:value\n"
        "x-oss-security-token:token\n"
        "\n"
        "\n"
        "UNSIGNED-PAYLOAD"
    )
    assert v4_canonical_request("PUT", "bucket", V4_KEY, V4_QUERY, headers) == expected_canonical
    assert sts == v4_string_to_sign(
        expected_canonical, "20231217T034736Z", "20231217/cn-hangzhou/oss/aliyun_v4_request"
    )
    assert headers["authorization"] == (
        "OSS4-HMAC-SHA256 Credential=ak/20231217/cn-hangzhou/oss/aliyun_v4_request,"
        "Signature=b94a3f999cf85bcdc00d332fbd3734ba03e48382c36fa4d5af5df817395bd9ea"
    )


H3_AUTH = (
    "OSS4-HMAC-SHA256 Credential=ak/20231216/cn-hangzhou/oss/aliyun_v4_request,"
    "AdditionalHeaders=abc;zabc,"
    "Signature=4a4183c187c07c8947db7620deb0a6b38d9fbdd34187b6dbaccb316fa251212f"
)
H3_CANONICAL = (
    "PUT\n"
    "/bucket/1234%2B-/123/1.txt\n"
    "%2Bparam1=value3&%2Bparam2&%7Cparam1=value4&%7Cparam2&param1=value1&param2\n"
    "abc:value\n"
    "content-type:text/plain\n"
    "x-oss-content-sha256:UNSIGNED-PAYLOAD\n"
    "x-oss-date:20231216T172512Z\n"
    "x-oss-head1:value\n"
    "zabc:value\n"
    "\n"
    "abc;zabc\n"
    "UNSIGNED-PAYLOAD"
)


@pytest.mark.parametrize(
    "additional",
    [
        pytest.param({"ZAbc", "abc"}, id="set"),
        pytest.param(["abc", "ZAbc"], id="list"),
        pytest.param(["ZAbc", "abc", "ZABC"], id="duplicates-by-case"),
        # Not present / always signed anyway: ignored, same result.
        pytest.param({"x-oss-no-exist", "ZAbc", "x-oss-head1", "abc"}, id="with-ignored-names"),
    ],
)
def test_v4_h3_additional_headers(additional: Iterable[str]) -> None:
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    sts = sign_v4(
        "PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702747512), "cn-hangzhou",
        additional_headers=additional,
    )
    assert headers["authorization"] == H3_AUTH
    assert (
        v4_canonical_request("PUT", "bucket", V4_KEY, V4_QUERY, headers, additional)
        == H3_CANONICAL
    )
    assert sts == v4_string_to_sign(
        H3_CANONICAL, "20231216T172512Z", "20231216/cn-hangzhou/oss/aliyun_v4_request"
    )


def test_v4_additional_headers_never_empty() -> None:
    # Only absent or always-signed names: no "AdditionalHeaders=" field at all (PROTOCOL §3.2.5).
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    sign_v4(
        "PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702743657), "cn-hangzhou",
        additional_headers=["x-oss-no-exist", "content-type", "Content-MD5", "not-there"],
    )
    assert headers["authorization"] == H1_AUTH


def test_v4_resign_replaces_previous_signature_headers() -> None:
    # Signing the same dict twice (a retry) gives the documented result, not a mix.
    headers = _v4_headers()
    creds = Credentials(access_key_id="ak", access_key_secret="sk")
    sign_v4("PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702700000), "cn-hangzhou")
    headers["Authorization"] = headers.pop("authorization")
    headers["X-Oss-Date"] = headers.pop("x-oss-date")
    sign_v4("PUT", "bucket", V4_KEY, V4_QUERY, headers, creds, _utc(1702743657), "cn-hangzhou")
    assert headers["authorization"] == H1_AUTH
    assert [k for k in headers if k.lower() == "authorization"] == ["authorization"]
    assert [k for k in headers if k.lower() == "x-oss-date"] == ["x-oss-date"]


def test_v4_canonical_uri_forms() -> None:
    # PROTOCOL §3.2: "/bucket/" with no key, "/" with no bucket.
    hdrs = {"x-oss-date": "20231216T162057Z"}
    assert v4_canonical_request("GET", "bucket", None, [], hdrs).split("\n")[1] == "/bucket/"
    assert v4_canonical_request("GET", None, None, [], hdrs).split("\n")[1] == "/"
