"""``sign_post_policy``: a server signs, a "browser" (httpx posting a form) uploads straight to
the emulator over a real socket, and the callback reaches a real server that verifies it."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

import anyio
import httpx
import pytest
from support.emulator_helpers import error_code

from oss_callback import AsyncBucket, Bucket, Callback, PostPolicy
from oss_callback.server import CallbackVerifier
from oss_callback.testing import CallbackReceiver, OSSEmulator


def browser_upload(
    policy: PostPolicy, data: bytes, filename: str = "cat.png",
    change: Mapping[str, str] | None = None,
) -> httpx.Response:
    """What a browser's form does: the fields, then the file last."""
    fields = {**policy.fields, **(change or {})}
    files = {"file": (filename, data, "application/octet-stream")}
    with httpx.Client(trust_env=False, timeout=30) as http:
        return http.post(policy.url, data=fields, files=files)


def _bucket(emu: OSSEmulator, name: str, **kw: object) -> Bucket:
    emu.create_bucket(name)
    return Bucket(name, emu.endpoint, emu.access_key_id, emu.access_key_secret,
                  region=emu.region, path_style=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["v4", "v1"])
def test_browser_upload_with_callback(
    oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, version: str
) -> None:
    with _bucket(oss_emulator, "post-policy", signature_version=version) as bucket:
        callback = Callback(callback_receiver.url + "/uploaded",
                            body="object=${object}&size=${size}&user=${x:user}",
                            variables={"x:user": "u-42"})
        policy = bucket.sign_post_policy(key_prefix="avatars/u-42/", callback=callback,
                                         max_size=1024 * 1024, content_type="image/png")
        data = os.urandom(50_000)
        r = browser_upload(policy, data)
        assert r.status_code == 200, r.text
        assert r.json() == {"Status": "OK"}  # the app server's answer, via OSS
        assert bucket.get_object("avatars/u-42/cat.png") == data
        assert bucket.head_object("avatars/u-42/cat.png").content_type == "image/png"
    (received,) = callback_receiver.wait_for(1)
    verified = anyio.run(CallbackVerifier(public_key=oss_emulator.public_key_pem).verify,
                         received.method, received.path, received.query, received.headers,
                         received.body)
    assert verified.fields == {"object": "avatars/u-42/cat.png", "size": "50000", "user": "u-42"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"key": "elsewhere/cat.png"}, "AccessDenied"),  # outside the prefix
        ({"x:user": "admin"}, "AccessDenied"),  # a pinned callback variable
        ({"Content-Type": "text/html"}, "AccessDenied"),
        ({"callback": base64.b64encode(json.dumps(
            {"callbackUrl": "http://127.0.0.1:1/", "callbackBody": "a=b"}).encode()).decode()},
         "AccessDenied"),
    ],
)
def test_the_browser_cannot_change_what_the_policy_pins(
    oss_emulator: OSSEmulator, change: dict[str, str], code: str
) -> None:
    with _bucket(oss_emulator, "post-pinned") as bucket:
        callback = Callback("http://127.0.0.1:9/cb", variables={"x:user": "u-1"})
        policy = bucket.sign_post_policy(key_prefix="in/", callback=callback,
                                         content_type="image/png")
        r = browser_upload(policy, b"data", change=change)
        assert r.status_code == 403, r.text
        assert error_code(r) == code
        assert oss_emulator.list_keys("post-pinned") == []


def test_size_limits_and_status(oss_emulator: OSSEmulator) -> None:
    with _bucket(oss_emulator, "post-sizes") as bucket:
        policy = bucket.sign_post_policy("exact.bin", min_size=10, max_size=100,
                                         success_action_status=201)
        assert error_code(browser_upload(policy, b"x" * 101)) == "EntityTooLarge"
        assert error_code(browser_upload(policy, b"x" * 9)) == "EntityTooSmall"
        r = browser_upload(policy, b"x" * 100)
        assert r.status_code == 201
        assert b"<Key>exact.bin</Key>" in r.content
        assert bucket.get_object("exact.bin") == b"x" * 100
        r = browser_upload(policy, b"y" * 50, change={"key": "other.bin"})
        assert r.status_code == 403  # an exact key is pinned too


async def test_async_bucket_signs_the_same_way(oss_emulator: OSSEmulator) -> None:
    oss_emulator.create_bucket("post-async")
    async with AsyncBucket("post-async", oss_emulator.endpoint, oss_emulator.access_key_id,
                           oss_emulator.access_key_secret, region=oss_emulator.region,
                           path_style=True) as bucket:
        policy = bucket.sign_post_policy("a.txt", expires=60)
        r = await anyio.to_thread.run_sync(browser_upload, policy, b"hello")
        assert r.status_code == 204
        assert await bucket.get_object("a.txt") == b"hello"


def test_bad_arguments_and_repr(oss_emulator: OSSEmulator) -> None:
    with _bucket(oss_emulator, "post-args") as bucket:
        cases: list[tuple[dict[str, object], str]] = [
            ({}, "exactly one of key"),
            ({"key": "a", "key_prefix": "b/"}, "exactly one of key"),
            ({"key": "a", "expires": 0}, "expires must be"),
            ({"key": "a", "expires": 8 * 24 * 3600}, "expires must be"),
            ({"key": "a", "min_size": 5, "max_size": 4}, "min_size <= max_size"),
            ({"key": "a", "success_action_status": 302}, "success_action_status"),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                bucket.sign_post_policy(**kwargs)  # type: ignore[arg-type]
    sts = Bucket("post-args", oss_emulator.endpoint, "STS.key", "sts-secret",
                 security_token="sts-token-secret", region=oss_emulator.region)
    try:
        policy = sts.sign_post_policy("k")
        assert policy.fields["x-oss-security-token"] == "sts-token-secret"
        assert "sts-token-secret" not in repr(policy)
        assert "sts-secret" not in repr(policy)
    finally:
        sts.close()


def test_sts_policy_is_accepted(oss_emulator: OSSEmulator) -> None:
    creds = oss_emulator.issue_sts_token()
    oss_emulator.create_bucket("post-sts")
    with Bucket("post-sts", oss_emulator.endpoint, creds.access_key_id,
                creds.access_key_secret, security_token=creds.security_token,
                region=oss_emulator.region, path_style=True) as bucket:
        policy = bucket.sign_post_policy("via-sts.txt")
        assert browser_upload(policy, b"sts").status_code == 204
        r = browser_upload(policy, b"sts", change={"x-oss-security-token": "forged"})
        assert r.status_code == 403
        assert oss_emulator.get_object("post-sts", "via-sts.txt") == b"sts"
