"""The emulator's side of issue #15: several key pairs at once, STS tokens with an expiry,
and OSS's answer to an expired token (403 ``SecurityTokenExpired``, EC 0002-00000007) on
header-signed requests (V1/V4), presigned URLs and PostObject forms."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from support.emulator_helpers import error_code, error_field, oss_request

from oss_callback.protocol._signing import v1_signature, v1_string_to_sign
from oss_callback.testing import OSSEmulator, StsCredentials


def get(emu: OSSEmulator, bucket: str, sts: StsCredentials, version: str = "v4"
        ) -> httpx.Response:
    return oss_request(emu, "GET", bucket, version=version, access_key_id=sts.access_key_id,
                       access_key_secret=sts.access_key_secret,
                       security_token=sts.security_token)


def assert_expired_answer(r: httpx.Response, sts: StsCredentials) -> None:
    assert (r.status_code, error_code(r)) == (403, "SecurityTokenExpired")
    assert error_field(r, "Message") == "The security token you provided has expired."
    assert error_field(r, "EC") == "0002-00000007"
    assert r.headers["x-oss-ec"] == "0002-00000007"
    assert error_field(r, "OSSAccessKeyId") == sts.access_key_id
    assert sts.security_token not in r.text and sts.access_key_secret not in r.text


def test_issue_sts_token_default_expiry_and_compatibility(oss_emulator: OSSEmulator,
                                                          oss_bucket: str) -> None:
    sts = oss_emulator.issue_sts_token()
    ak, secret, token = sts  # still unpacks as three values
    assert (ak, secret, token) == (sts.access_key_id, sts.access_key_secret,
                                   sts.security_token)
    assert sts.expiration is not None
    left = (sts.expiration - datetime.now(timezone.utc)).total_seconds()
    assert 3590 < left <= 3600
    assert secret not in repr(sts) and token not in repr(sts)
    assert get(oss_emulator, oss_bucket, sts).status_code == 200
    forever = oss_emulator.issue_sts_token(expires_in=None)
    assert forever.expiration is None
    assert get(oss_emulator, oss_bucket, forever).status_code == 200
    with pytest.raises(ValueError, match="expires_in"):
        oss_emulator.issue_sts_token(expires_in=-1)


@pytest.mark.parametrize("version", ["v4", "v1"])
def test_token_expires_after_its_lifetime(oss_emulator: OSSEmulator, oss_bucket: str,
                                          version: str) -> None:
    sts = oss_emulator.issue_sts_token(expires_in=0.5)
    assert get(oss_emulator, oss_bucket, sts, version).status_code == 200
    time.sleep(0.6)
    assert_expired_answer(get(oss_emulator, oss_bucket, sts, version), sts)
    # other keys are untouched: several pairs and tokens are accepted at once
    other = oss_emulator.issue_sts_token()
    assert get(oss_emulator, oss_bucket, other, version).status_code == 200
    assert oss_request(oss_emulator, "GET", oss_bucket, version=version).status_code == 200


def test_expire_and_remove_credentials(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    a, b = oss_emulator.issue_sts_token(), oss_emulator.issue_sts_token()
    oss_emulator.expire_credentials(a.access_key_id)
    assert_expired_answer(get(oss_emulator, oss_bucket, a), a)
    oss_emulator.remove_credentials(b.access_key_id)  # revoked: unknown key
    assert error_code(get(oss_emulator, oss_bucket, b)) == "InvalidAccessKeyId"
    with pytest.raises(KeyError):
        oss_emulator.expire_credentials(b.access_key_id)
    oss_emulator.reset()  # issued tokens don't survive a reset
    assert error_code(get(oss_emulator, "any", a)) == "InvalidAccessKeyId"


def test_add_credentials_with_an_expiration(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    oss_emulator.add_credentials("STS.given", "given-secret", "given-token", expiration=past)
    given = StsCredentials(access_key_id="STS.given", access_key_secret="given-secret",
                           security_token="given-token", expiration=past)
    assert_expired_answer(get(oss_emulator, oss_bucket, given), given)
    with pytest.raises(ValueError, match="timezone-aware"):
        oss_emulator.add_credentials("k", "s", expiration=datetime.now())


def test_expired_token_in_a_presigned_url(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_emulator.create_bucket(oss_bucket)
    sts = oss_emulator.issue_sts_token()

    def presigned() -> str:  # V1 (PROTOCOL.md §3.1): security-token is a signed sub-resource
        expires = str(int(time.time()) + 300)
        query = [("security-token", sts.security_token)]
        sts_text = v1_string_to_sign("GET", oss_bucket, None, query, {"date": expires})
        signature = v1_signature(sts.access_key_secret, sts_text)
        return (f"{oss_emulator.endpoint}/{oss_bucket}/?OSSAccessKeyId={sts.access_key_id}"
                f"&Expires={expires}&Signature={quote(signature, safe='')}"
                f"&security-token={quote(sts.security_token, safe='')}")

    with httpx.Client(trust_env=False, timeout=30) as http:
        assert http.get(presigned()).status_code == 200
        oss_emulator.expire_credentials(sts.access_key_id)
        assert_expired_answer(http.get(presigned()), sts)


def test_expired_token_in_a_post_form(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    sts = oss_emulator.issue_sts_token()
    expiration = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    policy = base64.b64encode(json.dumps({
        "expiration": expiration,
        "conditions": [{"bucket": oss_bucket}, ["eq", "$key", "form.txt"],
                       {"x-oss-security-token": sts.security_token}],
    }).encode()).decode()
    fields = {"key": "form.txt", "OSSAccessKeyId": sts.access_key_id, "policy": policy,
              "Signature": v1_signature(sts.access_key_secret, policy),
              "x-oss-security-token": sts.security_token}

    def post() -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=30) as http:
            return http.post(f"{oss_emulator.endpoint}/{oss_bucket}", data=fields,
                             files={"file": ("f.txt", b"form body", "text/plain")})

    assert post().status_code == 204
    oss_emulator.expire_credentials(sts.access_key_id)
    assert_expired_answer(post(), sts)
