"""Credentials that rotate (issue #15), against the emulator: STS tokens that expire or are
revoked in the middle of a 64-part resumable upload, the single flight over real requests,
an expired token without a provider, the synchronous ``Client``, and the official
alibabacloud-credentials client through the adapter."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import anyio
import httpx
import pytest
from support.emulator_helpers import error_code, oss_request

from oss_callback import (
    AlibabaCloudCredentialsProvider,
    AsyncClient,
    Bucket,
    Client,
    Credentials,
    CredentialsError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.testing import OSSEmulator, StsCredentials

PART = 100 * 1024  # OSS's smallest part
PARTS = 64


class EmulatorSts:
    """A provider that has the emulator issue a new STS token at every call (as an
    AssumeRole-based provider would), each valid for ``lifetime`` seconds."""

    def __init__(self, emu: OSSEmulator, lifetime: float) -> None:
        self.emu = emu
        self.lifetime = lifetime
        self.issued: list[StsCredentials] = []
        self.threads: set[int] = set()
        self.delay = 0.0

    def issue(self) -> Credentials:
        self.threads.add(threading.get_ident())
        sts = self.emu.issue_sts_token(expires_in=self.lifetime)
        self.issued.append(sts)
        return Credentials(sts.access_key_id, sts.access_key_secret, sts.security_token,
                           expiration=sts.expiration)


class AsyncEmulatorSts(EmulatorSts):
    async def get_credentials(self) -> Credentials:
        if self.delay:
            await anyio.sleep(self.delay)
        return self.issue()


class SyncEmulatorSts(EmulatorSts):
    def get_credentials(self) -> Credentials:
        return self.issue()


def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(PARTS * PART)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def auth_failures(emu: OSSEmulator) -> list[tuple[str, str | None]]:
    return [(r.operation, r.error_code) for r in emu.requests if r.status == 403]


def part_tokens(emu: OSSEmulator) -> set[str | None]:
    return {r.headers.get("x-oss-security-token") for r in emu.requests
            if r.operation == "UploadPart" and r.status == 200}


def assert_expired(emu: OSSEmulator, bucket: str, sts: StsCredentials) -> None:
    r = oss_request(emu, "GET", bucket, access_key_id=sts.access_key_id,
                    access_key_secret=sts.access_key_secret, security_token=sts.security_token)
    assert (r.status_code, error_code(r)) == (403, "SecurityTokenExpired")


async def test_sts_token_expires_in_the_middle_of_a_64_part_upload(
    oss_emulator: OSSEmulator, oss_bucket: str, tmp_path: Path
) -> None:
    src, data = source(tmp_path)
    provider = AsyncEmulatorSts(oss_emulator, lifetime=3)
    # 16 rounds of 4 parts, 0.25 s each: the upload outlives the first 3-second token.
    oss_emulator.faults.add(operation="UploadPart", delay=0.25, times=None)
    async with AsyncClient(oss_emulator.endpoint, region=oss_emulator.region,
                           credentials_provider=provider, retry=RetryPolicy.no_wait()) as client:
        started = time.monotonic()
        result = await client.get_bucket(oss_bucket).resumable_upload(
            "rotated.bin", src, part_size=PART, concurrency=4,
            checkpoint_file=tmp_path / "ckpt.json")
        elapsed = time.monotonic() - started
    assert elapsed > provider.lifetime  # the first token expired while the upload ran
    assert result.size == len(data)
    assert oss_emulator.get_object(oss_bucket, "rotated.bin") == data
    assert auth_failures(oss_emulator) == []  # renewed ahead of expiry: never refused
    assert len(provider.issued) >= 2
    assert len(part_tokens(oss_emulator)) >= 2  # parts were signed with several tokens
    # each part stored once and no part re-sent for its credentials (a loaded machine may
    # still retry one for a slow answer: that is the retry policy's, not the renewal's)
    parts = [dict(r.query)["partNumber"] for r in oss_emulator.requests
             if r.operation == "UploadPart"]
    assert sorted(set(parts), key=int) == [str(n) for n in range(1, PARTS + 1)]
    assert len(parts) <= PARTS + 2
    assert_expired(oss_emulator, oss_bucket, provider.issued[0])


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_token_revoked_mid_upload_is_renewed_and_the_parts_retried(
    oss_emulator: OSSEmulator, oss_bucket: str, tmp_path: Path, how: str
) -> None:
    src, data = source(tmp_path)
    provider = AsyncEmulatorSts(oss_emulator, lifetime=3600)
    revoked: list[str] = []

    def revoke_at_half(done: int, total: int | None) -> None:
        if not revoked and done >= len(data) // 2:
            current = provider.issued[-1].access_key_id
            revoked.append(current)
            if how == "revoked":
                oss_emulator.remove_credentials(current)
            else:
                oss_emulator.expire_credentials(current)

    async with AsyncClient(oss_emulator.endpoint, region=oss_emulator.region,
                           credentials_provider=provider, retry=RetryPolicy.no_wait()) as client:
        await client.get_bucket(oss_bucket).resumable_upload(
            "revoked.bin", src, part_size=PART, concurrency=4, disable_checkpoint=True,
            progress=revoke_at_half)
    assert oss_emulator.get_object(oss_bucket, "revoked.bin") == data
    assert revoked == [provider.issued[0].access_key_id]
    assert len(provider.issued) == 2  # one renewal for every part the token failed
    expected = "InvalidAccessKeyId" if how == "revoked" else "SecurityTokenExpired"
    failures = auth_failures(oss_emulator)
    assert failures and set(failures) <= {("UploadPart", expected),
                                          ("CompleteMultipartUpload", expected)}
    assert part_tokens(oss_emulator) == {s.security_token for s in provider.issued}


async def test_single_flight_over_real_requests(oss_emulator: OSSEmulator,
                                                oss_bucket: str) -> None:
    provider = AsyncEmulatorSts(oss_emulator, lifetime=6)
    provider.delay = 0.05
    async with AsyncClient(oss_emulator.endpoint, region=oss_emulator.region,
                           credentials_provider=provider, max_connections=64,
                           retry=RetryPolicy.no_wait()) as client:
        bucket = client.get_bucket(oss_bucket)

        async def burst(tag: str) -> None:
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(bucket.put_object, f"{tag}/{i}", tag.encode())

        await burst("first")
        assert len(provider.issued) == 1  # 64 requests, no credentials yet: one call
        expiration = provider.issued[0].expiration
        assert expiration is not None
        due = expiration.timestamp() - provider.lifetime / 2 + 0.1  # half the lifetime left
        await anyio.sleep(max(0.0, due - time.time()))
        await burst("second")
        assert len(provider.issued) == 2  # 64 requests during the renewal: one call
    assert len(oss_emulator.list_keys(oss_bucket)) == 128
    assert auth_failures(oss_emulator) == []


@pytest.mark.parametrize("version", ["v4", "v1"])
async def test_expired_token_without_a_provider_is_osss_error(
    oss_emulator: OSSEmulator, oss_bucket: str, version: str
) -> None:
    sts = oss_emulator.issue_sts_token(expires_in=0)
    async with AsyncClient(oss_emulator.endpoint, sts.access_key_id, sts.access_key_secret,
                           security_token=sts.security_token, region=oss_emulator.region,
                           signature_version=version) as client:  # type: ignore[arg-type]
        bucket = client.get_bucket(oss_bucket)
        with pytest.raises(ServiceError) as info:
            await bucket.put_object("k", b"x")
        with pytest.raises(ServiceError) as head:
            await bucket.head_object("k")  # bodiless: the error comes in x-oss-err
    err = info.value
    assert (err.status, err.code, err.ec) == (403, "SecurityTokenExpired", "0002-00000007")
    assert err.message == "The security token you provided has expired."
    assert "the STS token expired; get a new one" in str(err)
    assert sts.security_token not in str(err) and sts.access_key_secret not in str(err)
    assert head.value.code == "SecurityTokenExpired"
    assert [r.operation for r in oss_emulator.requests] == ["PutObject", "HeadObject"]


# --------------------------------------------------------------------------- sync Client


def test_sync_client_rotates_mid_upload(oss_emulator: OSSEmulator, oss_bucket: str,
                                        tmp_path: Path) -> None:
    src, data = source(tmp_path)
    provider = SyncEmulatorSts(oss_emulator, lifetime=3)
    oss_emulator.faults.add(operation="UploadPart", delay=0.25, times=None)
    with Client(oss_emulator.endpoint, region=oss_emulator.region,
                credentials_provider=provider, retry=RetryPolicy.no_wait()) as client:
        started = time.monotonic()
        client.get_bucket(oss_bucket).resumable_upload(
            "sync-rotated.bin", src, part_size=PART, concurrency=4, disable_checkpoint=True)
        assert time.monotonic() - started > provider.lifetime
    assert oss_emulator.get_object(oss_bucket, "sync-rotated.bin") == data
    assert auth_failures(oss_emulator) == []
    assert len(provider.issued) >= 2
    assert threading.get_ident() not in provider.threads  # a worker thread of the loop
    assert_expired(oss_emulator, oss_bucket, provider.issued[0])


def test_sync_client_expired_token_and_provider_failure(oss_emulator: OSSEmulator,
                                                        oss_bucket: str) -> None:
    sts = oss_emulator.issue_sts_token(expires_in=0)
    with Bucket(oss_bucket, oss_emulator.endpoint, sts.access_key_id, sts.access_key_secret,
                security_token=sts.security_token, region=oss_emulator.region) as bucket, \
            pytest.raises(ServiceError, match="SecurityTokenExpired"):
        bucket.put_object("k", b"x")

    class Down:
        def get_credentials(self) -> Credentials:
            raise TimeoutError("ECS metadata service did not answer")

    with Bucket(oss_bucket, oss_emulator.endpoint, region=oss_emulator.region,
                credentials_provider=Down()) as bucket, \
            pytest.raises(CredentialsError, match="ECS metadata service") as info:
        bucket.put_object("k", b"x")
    assert isinstance(info.value.__cause__, TimeoutError)
    assert [r.operation for r in oss_emulator.requests] == ["PutObject"]


def test_sync_post_policy_with_a_provider_is_accepted(oss_emulator: OSSEmulator,
                                                      oss_bucket: str) -> None:
    provider = SyncEmulatorSts(oss_emulator, lifetime=3600)
    with Bucket(oss_bucket, oss_emulator.endpoint, region=oss_emulator.region,
                credentials_provider=provider) as bucket:
        with pytest.raises(CredentialsError, match="get_credentials"):
            bucket.sign_post_policy("form.txt")
        bucket.client.get_credentials()
        policy = bucket.sign_post_policy("form.txt")
    assert policy.fields["x-oss-security-token"] == provider.issued[0].security_token
    with httpx.Client(trust_env=False, timeout=30) as http:
        r = http.post(policy.url, data=dict(policy.fields),
                      files={"file": ("f.txt", b"via form", "text/plain")})
    assert r.status_code == 204, r.text
    assert oss_emulator.get_object(oss_bucket, "form.txt") == b"via form"


# --------------------------------------------------------------------------- official client


async def test_official_alibabacloud_credentials_client_against_the_emulator(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    models = pytest.importorskip("alibabacloud_credentials.models")
    client_module = pytest.importorskip("alibabacloud_credentials.client")
    sts = oss_emulator.issue_sts_token()
    official = client_module.Client(models.Config(
        type="sts", access_key_id=sts.access_key_id, access_key_secret=sts.access_key_secret,
        security_token=sts.security_token))
    async with AsyncClient(oss_emulator.endpoint, region=oss_emulator.region,
                           credentials_provider=AlibabaCloudCredentialsProvider(official)
                           ) as client:
        await client.get_bucket(oss_bucket).put_object("official.txt", b"via the chain")
    assert oss_emulator.get_object(oss_bucket, "official.txt") == b"via the chain"
    (put,) = oss_emulator.requests
    assert put.headers["x-oss-security-token"] == sts.security_token
    assert sts.expiration is not None and sts.expiration > datetime.now(timezone.utc)
