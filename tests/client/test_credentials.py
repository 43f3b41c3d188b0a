"""Credentials that rotate (issue #15), unit level: ``Credentials``, the constructors'
``credentials_provider=``, when the provider is asked (margins, single flight, failures, the
403 retry), redaction after rotation, the synchronous signing helpers, and the providers
shipped in ``oss_callback.client._providers``.

Requests go to an ``httpx.MockTransport`` whose handler plays OSS's part: it accepts or
refuses the signing key, which needs state a respx route would hide. Everything against a
real server is in test_credentials_rotation.py (the emulator).
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest

from oss_callback import (
    AlibabaCloudCredentialsProvider,
    AsyncBucket,
    AsyncClient,
    Bucket,
    Client,
    Credentials,
    CredentialsError,
    CredentialsProvider,
    EnvironmentCredentialsProvider,
    OSSError,
    RetryPolicy,
    ServiceError,
    StaticCredentialsProvider,
)
from oss_callback.client._credentials_cache import REFRESH_MARGIN

ENDPOINT = "http://127.0.0.1:9"  # never reached: the transport answers
REGION = "cn-hangzhou"


def utc_in(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def creds(n: int, lifetime: float | None = 3600) -> Credentials:
    return Credentials(f"STS.key-{n}", f"secret-{n}-" + "s" * 20, f"token-{n}-" + "t" * 40,
                       expiration=None if lifetime is None else utc_in(lifetime))


class FakeOSS:
    """Answers like OSS: 200 to requests signed with an accepted key, else 403."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}  # access key id -> 403 code
        self.seen: list[httpx.Request] = []

    def key_id(self, request: httpx.Request) -> str:
        auth = request.headers["authorization"]
        return auth.split("Credential=", 1)[1].split("/", 1)[0]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append(request)
        code = self.refused.get(self.key_id(request))
        if code is not None:
            xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                   f"<Message>refused</Message><RequestId>RID-403</RequestId></Error>")
            return httpx.Response(403, content=xml.encode(),
                                  headers={"x-oss-request-id": "RID-403"})
        return httpx.Response(200, headers={"etag": '"D8E8FCA2DC0F896FD7CB4CB0031BA249"',
                                            "x-oss-request-id": "RID-OK"})

    def key_ids(self) -> list[str]:
        return [self.key_id(r) for r in self.seen]


class Issuer:
    """An async provider handing out ``creds(1)``, ``creds(2)``, ... (or what ``make`` says)."""

    def __init__(self, lifetime: float | None = 3600, delay: float = 0.0,
                 make: Callable[[int], Credentials] | None = None) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.delay = delay
        self.make = make

    async def get_credentials(self) -> Credentials:
        self.calls += 1
        n = self.calls
        if self.delay:
            await anyio.sleep(self.delay)
        return self.make(n) if self.make else creds(n, self.lifetime)


class SyncIssuer:
    """The same with a blocking ``get_credentials`` (run in a worker thread)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.delay = delay
        self._lock = threading.Lock()

    def get_credentials(self) -> Credentials:
        self.threads.add(threading.get_ident())
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.delay:
            threading.Event().wait(self.delay)
        return creds(n)


def make_client(provider: object, oss: FakeOSS, **kw: Any) -> AsyncClient:
    kw.setdefault("retry", RetryPolicy.no_wait())
    return AsyncClient(ENDPOINT, region=REGION, credentials_provider=provider,  # type: ignore[arg-type]
                       transport=httpx.MockTransport(oss), **kw)


@pytest.fixture
def oss() -> FakeOSS:
    return FakeOSS()


@pytest.fixture
async def issuer_bucket(oss: FakeOSS) -> AsyncIterator[tuple[Issuer, AsyncBucket]]:
    issuer = Issuer()
    async with make_client(issuer, oss) as client:
        yield issuer, client.get_bucket("b-1")


def later(client: AsyncClient | AsyncBucket, seconds: float) -> None:
    """Move the client's clock (the OSS-corrected one its refresh times are kept on)."""
    session = client._session if isinstance(client, AsyncBucket) else client._check_open()
    session.clock_offset = seconds


# --------------------------------------------------------------------------- Credentials


def test_credentials_positional_and_repr_hides_secrets() -> None:
    expiry = utc_in(60)
    c = Credentials("STS.id", "the-secret-value", "the-token-value", expiry)
    assert (c.access_key_id, c.access_key_secret, c.security_token, c.expiration) == (
        "STS.id", "the-secret-value", "the-token-value", expiry)
    text = repr(c)
    assert "STS.id" in text and "expiration" in text
    assert "the-secret-value" not in text and "the-token-value" not in text
    assert Credentials("id", "secret", "").security_token is None


def test_credentials_validation() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Credentials("id", "secret", expiration=datetime.now())
    with pytest.raises(TypeError, match="datetime"):
        Credentials("id", "secret", expiration=3600)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="security_token"):
        Credentials("id", "secret", "tok\r\nen")
    with pytest.raises(ValueError, match="access_key_secret"):
        Credentials("id", "")


# --------------------------------------------------------------------------- constructors


def test_provider_is_exclusive_with_keys() -> None:
    provider = StaticCredentialsProvider(creds(1))
    for kw in ({"access_key_id": "ak"}, {"access_key_secret": "sk"},
               {"security_token": "tok"}):
        with pytest.raises(TypeError, match="not both"):
            AsyncClient(ENDPOINT, region=REGION, credentials_provider=provider, **kw)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not both"):
            Client(ENDPOINT, region=REGION, credentials_provider=provider, **kw)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        AsyncBucket("b-1", ENDPOINT, "ak", region=REGION, credentials_provider=provider)
    with pytest.raises(TypeError, match="get_credentials"):
        AsyncClient(ENDPOINT, region=REGION, credentials_provider=object())  # type: ignore[arg-type]


async def test_provider_needs_no_environment(monkeypatch: pytest.MonkeyPatch,
                                             oss: FakeOSS) -> None:
    for var in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    issuer = Issuer()
    async with make_client(issuer, oss) as client:
        assert issuer.calls == 0  # asked lazily, not in the constructor
        assert "credentials_provider=Issuer access_key_id=None" in repr(client)
        await client.get_bucket("b-1").put_object("k", b"x")
        assert "access_key_id='STS.key-1'" in repr(client)
        assert "secret-1" not in repr(client)
    assert isinstance(issuer, CredentialsProvider)


async def test_bucket_built_directly_takes_a_provider(oss: FakeOSS) -> None:
    issuer = Issuer()
    async with AsyncBucket("b-1", ENDPOINT, region=REGION, credentials_provider=issuer,
                           transport=httpx.MockTransport(oss)) as bucket:
        await bucket.put_object("k", b"x")
    assert issuer.calls == 1
    assert oss.key_ids() == ["STS.key-1"]
    assert oss.seen[0].headers["x-oss-security-token"] == creds(1).security_token


# --------------------------------------------------------------------------- when to ask


async def test_asked_once_then_again_within_the_margin(
    issuer_bucket: tuple[Issuer, AsyncBucket], oss: FakeOSS
) -> None:
    issuer, bucket = issuer_bucket
    for _ in range(3):
        await bucket.put_object("k", b"x")
    assert issuer.calls == 1
    later(bucket, 3600 - REFRESH_MARGIN - 5)  # 5 min 5 s before expiry: still fresh
    await bucket.put_object("k", b"x")
    assert issuer.calls == 1
    later(bucket, 3600 - REFRESH_MARGIN + 5)  # inside the 5-minute margin: renewed
    await bucket.put_object("k", b"x")
    await bucket.put_object("k", b"x")
    assert issuer.calls == 2
    assert oss.key_ids() == ["STS.key-1"] * 4 + ["STS.key-2"] * 2


async def test_short_lifetimes_are_renewed_halfway(oss: FakeOSS) -> None:
    issuer = Issuer(lifetime=4)
    async with make_client(issuer, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        later(client, 1.5)
        await bucket.put_object("k", b"x")
        assert issuer.calls == 1
        later(client, 2.5)  # past half of 4 s
        await bucket.put_object("k", b"x")
        assert issuer.calls == 2


async def test_credentials_without_expiration_are_asked_for_once(oss: FakeOSS) -> None:
    issuer = Issuer(lifetime=None)
    async with make_client(issuer, oss) as client:
        later(client, 10 * 365 * 86400)
        for _ in range(5):
            await client.get_bucket("b-1").put_object("k", b"x")
    assert issuer.calls == 1


async def test_sync_provider_runs_in_a_worker_thread(oss: FakeOSS) -> None:
    issuer = SyncIssuer()
    async with make_client(issuer, oss) as client:
        await client.get_bucket("b-1").put_object("k", b"x")
    assert issuer.calls == 1
    assert threading.get_ident() not in issuer.threads
    assert oss.key_ids() == ["STS.key-1"]


async def test_already_expired_credentials_are_used_and_asked_again(
    oss: FakeOSS, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = Issuer(lifetime=-10)
    async with make_client(issuer, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")  # OSS judges them (here: accepted)
        await bucket.put_object("k", b"x")
    assert issuer.calls == 2
    assert "expired 10 s ago" in caplog.text or "expired 9 s ago" in caplog.text


# --------------------------------------------------------------------------- single flight


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_single_flight_64_concurrent_requests(oss: FakeOSS, kind: str) -> None:
    issuer: Issuer | SyncIssuer = Issuer(delay=0.2) if kind == "async" else SyncIssuer(0.2)
    async with make_client(issuer, oss, max_connections=64) as client:
        bucket = client.get_bucket("b-1")

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(bucket.put_object, f"k{i}", b"x")

        await burst()
        assert issuer.calls == 1  # no credentials yet: one call for 64 requests
        later(client, 3500)  # due: less than 5 minutes left
        await burst()
        assert issuer.calls == 2  # due for renewal: one call again
    assert sorted(set(oss.key_ids())) == ["STS.key-1", "STS.key-2"]
    assert len(oss.seen) == 128


async def test_single_flight_shares_a_failure(oss: FakeOSS) -> None:
    calls = 0

    class Broken:
        async def get_credentials(self) -> Credentials:
            nonlocal calls
            calls += 1
            await anyio.sleep(0.1)
            raise RuntimeError("metadata service unreachable")

    failures: list[BaseException] = []
    async with make_client(Broken(), oss, max_connections=64) as client:
        bucket = client.get_bucket("b-1")

        async def one(i: int) -> None:
            try:
                await bucket.put_object(f"k{i}", b"x")
            except CredentialsError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
    assert calls == 1
    assert len(failures) == 64
    assert all(isinstance(f.__cause__, RuntimeError) for f in failures)
    assert oss.seen == []


# --------------------------------------------------------------------------- failures


async def test_provider_failure_is_a_clear_error(oss: FakeOSS) -> None:
    state = {"fail": True, "calls": 0}

    class Flaky:
        def get_credentials(self) -> Credentials:
            state["calls"] += 1
            if state["fail"]:
                raise ConnectionError("http://100.100.100.200 timed out")
            return creds(7)

    async with make_client(Flaky(), oss) as client:
        bucket = client.get_bucket("b-1")
        with pytest.raises(CredentialsError) as info:
            await bucket.put_object("k", b"x")
        err = info.value
        assert isinstance(err, OSSError)
        assert isinstance(err.__cause__, ConnectionError)
        assert str(err) == ("asking the credentials provider (Flaky) for credentials failed: "
                            "ConnectionError: http://100.100.100.200 timed out")
        assert oss.seen == []  # nothing was sent unsigned
        assert state["calls"] == 1  # a provider failure is not retried by the retry policy
        state["fail"] = False
        await bucket.put_object("k", b"x")  # the next request asks again
        assert state["calls"] == 2
    assert oss.key_ids() == ["STS.key-7"]


async def test_provider_returning_something_else(oss: FakeOSS) -> None:
    class Wrong:
        async def get_credentials(self) -> Any:
            return {"access_key_id": "ak", "access_key_secret": "sk"}

    async with make_client(Wrong(), oss) as client:
        with pytest.raises(CredentialsError, match=r"\(Wrong\) returned dict, not "
                                                   r"oss_callback.Credentials"):
            await client.get_bucket("b-1").put_object("k", b"x")


async def test_provider_error_message_is_redacted(oss: FakeOSS) -> None:
    first = creds(1, lifetime=4)

    class Leaky:
        calls = 0

        async def get_credentials(self) -> Credentials:
            self.calls += 1
            if self.calls == 1:
                return first
            raise ValueError(f"refresh of {first.access_key_secret} with "
                             f"{first.security_token} failed")

    async with make_client(Leaky(), oss) as client:
        await client.get_bucket("b-1").put_object("k", b"x")
        later(client, 10)  # expired: no fallback
        with pytest.raises(CredentialsError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    assert first.access_key_secret not in str(info.value)
    assert first.security_token not in str(info.value)  # type: ignore[operator]
    assert "<redacted>" in str(info.value)


async def test_failed_renewal_keeps_unexpired_credentials(
    oss: FakeOSS, caplog: pytest.LogCaptureFixture
) -> None:
    class Once:
        calls = 0

        async def get_credentials(self) -> Credentials:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("STS throttled")
            return creds(1, lifetime=600)

    provider = Once()
    async with make_client(provider, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        later(client, 400)  # due (within 5 min of expiry), not expired
        await bucket.put_object("k", b"x")  # renewal fails: the cached ones still work
        await bucket.put_object("k", b"x")  # within the pause: not asked again
        assert provider.calls == 2
        assert "STS throttled" in caplog.text
        later(client, 410)  # the pause is over: asked again (and still failing)
        await bucket.put_object("k", b"x")
        assert provider.calls == 3
        later(client, 601)  # expired: now the failure is the request's
        with pytest.raises(CredentialsError, match="STS throttled"):
            await bucket.put_object("k", b"x")
    assert oss.key_ids() == ["STS.key-1"] * 4


# --------------------------------------------------------------------------- 403: renew once


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SecurityTokenExpired",
                                  "InvalidSecurityToken"])
async def test_refused_credentials_are_renewed_once_and_retried(
    issuer_bucket: tuple[Issuer, AsyncBucket], oss: FakeOSS, code: str
) -> None:
    issuer, bucket = issuer_bucket
    await bucket.put_object("k", b"x")
    oss.refused["STS.key-1"] = code  # revoked early, long before its expiration
    progress: list[tuple[int, int | None]] = []
    await bucket.put_object("k", b"hello", progress=lambda d, t: progress.append((d, t)))
    assert issuer.calls == 2
    assert oss.key_ids() == ["STS.key-1", "STS.key-1", "STS.key-2"]
    assert (0, 5) in progress and progress[-1] == (5, 5)


async def test_renewed_once_only(issuer_bucket: tuple[Issuer, AsyncBucket],
                                 oss: FakeOSS) -> None:
    issuer, bucket = issuer_bucket
    oss.refused.update({"STS.key-1": "InvalidAccessKeyId", "STS.key-2": "InvalidAccessKeyId"})
    with pytest.raises(ServiceError) as info:
        await bucket.put_object("k", b"x")
    assert info.value.code == "InvalidAccessKeyId"
    assert issuer.calls == 2
    assert oss.key_ids() == ["STS.key-1", "STS.key-2"]


async def test_same_credentials_again_are_not_retried(oss: FakeOSS) -> None:
    same = creds(1)
    issuer = Issuer(make=lambda n: same)
    oss.refused["STS.key-1"] = "SecurityTokenExpired"
    async with make_client(issuer, oss) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    assert info.value.code == "SecurityTokenExpired"
    assert issuer.calls == 2
    assert len(oss.seen) == 1


async def test_other_403s_and_fixed_keys_are_not_renewed(oss: FakeOSS) -> None:
    issuer = Issuer()
    oss.refused["STS.key-1"] = "AccessDenied"
    async with make_client(issuer, oss) as client:
        with pytest.raises(ServiceError, match="AccessDenied"):
            await client.get_bucket("b-1").put_object("k", b"x")
    assert issuer.calls == 1
    oss.refused["fixed-key"] = "InvalidAccessKeyId"
    async with AsyncClient(ENDPOINT, "fixed-key", "fixed-secret", region=REGION,
                           transport=httpx.MockTransport(oss)) as client:
        with pytest.raises(ServiceError, match="InvalidAccessKeyId"):
            await client.get_bucket("b-1").put_object("k", b"x")
    assert oss.key_ids() == ["STS.key-1", "fixed-key"]


async def test_concurrent_refusals_renew_once(oss: FakeOSS) -> None:
    issuer = Issuer(delay=0.05)
    async with make_client(issuer, oss, max_connections=16) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        oss.refused["STS.key-1"] = "InvalidAccessKeyId"
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(bucket.put_object, f"k{i}", b"x")
    assert issuer.calls == 2
    assert oss.key_ids().count("STS.key-2") == 16


# --------------------------------------------------------------------------- redaction


async def test_redaction_follows_rotation(oss: FakeOSS) -> None:
    issuer = Issuer(lifetime=4)
    async with make_client(issuer, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        later(client, 3)
        await bucket.put_object("k", b"x")
        assert issuer.calls == 2
        redact = client._check_open().redact
        for n in (1, 2):
            c = creds(n)
            text = f"echo {c.access_key_secret} and {c.security_token}"
            assert c.access_key_secret not in redact(text)
            assert str(c.security_token) not in redact(text)


# --------------------------------------------------------------------------- sync signing


async def test_sign_post_policy_uses_the_cached_credentials(oss: FakeOSS) -> None:
    issuer = Issuer(lifetime=600)
    async with make_client(issuer, oss) as client:
        bucket = client.get_bucket("b-1")
        with pytest.raises(CredentialsError, match=r"get_credentials\(\)"):
            bucket.sign_post_policy("k")
        assert issuer.calls == 0
        got = await client.get_credentials()
        assert (got.access_key_id, got.security_token) == ("STS.key-1",
                                                           creds(1).security_token)
        policy = bucket.sign_post_policy("k")
        assert policy.fields["x-oss-security-token"] == got.security_token
        assert policy.fields["x-oss-credential"].startswith("STS.key-1/")
        assert client._check_open().current_credentials() is got
        later(client, 400)  # due for renewal: not signed with them any more
        with pytest.raises(CredentialsError, match="due for renewal"):
            bucket.sign_post_policy("k")
        await client.get_credentials()
        assert bucket.sign_post_policy("k").fields["x-oss-credential"].startswith("STS.key-2/")
    assert issuer.calls == 2


def test_sync_client_get_credentials_and_sign_post_policy(oss: FakeOSS) -> None:
    issuer = SyncIssuer()
    with Bucket("b-1", ENDPOINT, region=REGION, credentials_provider=issuer,
                transport=httpx.MockTransport(oss)) as bucket:
        with pytest.raises(CredentialsError):
            bucket.sign_post_policy("k")
        assert bucket.client.get_credentials().access_key_id == "STS.key-1"
        assert bucket.sign_post_policy("k").fields["x-oss-credential"].startswith("STS.key-1/")
        bucket.put_object("k", b"x")
    assert issuer.calls == 1


# --------------------------------------------------------------------------- providers


async def test_static_provider() -> None:
    c = creds(1)
    provider = StaticCredentialsProvider(c)
    assert await provider.get_credentials() is c
    assert c.access_key_secret not in repr(provider)
    with pytest.raises(TypeError):
        StaticCredentialsProvider(("ak", "sk"))  # type: ignore[arg-type]


async def test_environment_provider_reads_again_each_time(
    monkeypatch: pytest.MonkeyPatch, oss: FakeOSS
) -> None:
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "env-key-1")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "env-secret-1")
    monkeypatch.setenv("OSS_SESSION_TOKEN", "env-token-1")
    provider = EnvironmentCredentialsProvider()
    first = await provider.get_credentials()
    assert (first.access_key_id, first.security_token, first.expiration) == (
        "env-key-1", "env-token-1", None)
    async with make_client(provider, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        # the process rotates its environment; OSS refuses the old token: read again
        monkeypatch.setenv("OSS_ACCESS_KEY_ID", "env-key-2")
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "env-secret-2")
        monkeypatch.setenv("OSS_SESSION_TOKEN", "env-token-2")
        oss.refused["env-key-1"] = "SecurityTokenExpired"
        await bucket.put_object("k", b"x")
    assert oss.key_ids() == ["env-key-1", "env-key-1", "env-key-2"]
    assert oss.seen[-1].headers["x-oss-security-token"] == "env-token-2"
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET")
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_SECRET"):
        await provider.get_credentials()
    assert (await EnvironmentCredentialsProvider(
        {"OSS_ACCESS_KEY_ID": "a", "OSS_ACCESS_KEY_SECRET": "b"}).get_credentials()
    ).security_token is None


class FakeModel:
    """Shaped like alibabacloud_credentials.models.CredentialModel."""

    def __init__(self, access_key_id: str | None, access_key_secret: str | None,
                 security_token: str | None, type: str = "sts") -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.security_token = security_token
        self.type = type


class FakeAlibabaClient:
    """Shaped like alibabacloud_credentials.client.Client: get_credential() -> model."""

    def __init__(self, models: Iterable[FakeModel]) -> None:
        self.models = list(models)
        self.calls = 0
        self.threads: set[int] = set()

    def get_credential(self) -> FakeModel:
        self.threads.add(threading.get_ident())
        self.calls += 1
        return self.models[min(self.calls, len(self.models)) - 1]


async def test_alibabacloud_adapter_with_a_look_alike_client(oss: FakeOSS) -> None:
    fake = FakeAlibabaClient([FakeModel("STS.a1", "secret-a1", "token-a1"),
                              FakeModel("LTAI.a2", "secret-a2", "")])
    provider = AlibabaCloudCredentialsProvider(fake, refresh_interval=60)
    assert "FakeAlibabaClient" in repr(provider)
    async with make_client(provider, oss) as client:
        bucket = client.get_bucket("b-1")
        await bucket.put_object("k", b"x")
        got = client._check_open().current_credentials()
        assert got.security_token == "token-a1"
        assert got.expiration is not None
        assert 55 < (got.expiration - datetime.now(timezone.utc)).total_seconds() <= 60
        later(client, 31)  # halfway through refresh_interval: asked again
        await bucket.put_object("k", b"x")
    assert fake.calls == 2
    assert threading.get_ident() not in fake.threads
    assert oss.key_ids() == ["STS.a1", "LTAI.a2"]
    assert "x-oss-security-token" not in oss.seen[-1].headers  # "" -> no token


async def test_alibabacloud_adapter_refuses_bearer_tokens(oss: FakeOSS) -> None:
    fake = FakeAlibabaClient([FakeModel(None, None, None, type="bearer")])
    async with make_client(AlibabaCloudCredentialsProvider(fake), oss) as client:
        with pytest.raises(CredentialsError, match=r"no access key pair.*'bearer'") as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    assert isinstance(info.value.__cause__, ValueError)


def test_alibabacloud_adapter_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="get_credential"):
        AlibabaCloudCredentialsProvider(object())
    with pytest.raises(ValueError, match="refresh_interval"):
        AlibabaCloudCredentialsProvider(FakeAlibabaClient([]), refresh_interval=901)
    monkeypatch.setitem(sys.modules, "alibabacloud_credentials.client", None)  # not installed
    with pytest.raises(ImportError, match=r"oss-callback\[credentials\]"):
        AlibabaCloudCredentialsProvider()


def test_alibabacloud_adapter_builds_the_default_chain_lazily(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[FakeAlibabaClient] = []

    def factory() -> FakeAlibabaClient:
        built.append(FakeAlibabaClient([FakeModel("LTAI.d", "secret-d", None)]))
        return built[-1]

    module = types.ModuleType("alibabacloud_credentials.client")
    module.Client = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alibabacloud_credentials.client", module)
    provider = AlibabaCloudCredentialsProvider()
    assert built == [] and "default chain" in repr(provider)
    assert provider.get_credentials().access_key_id == "LTAI.d"
    assert provider.get_credentials().access_key_id == "LTAI.d"
    assert len(built) == 1 and built[0].calls == 2


def test_alibabacloud_adapter_with_the_real_package_static_sts() -> None:
    models = pytest.importorskip("alibabacloud_credentials.models")
    client_module = pytest.importorskip("alibabacloud_credentials.client")
    official = client_module.Client(models.Config(
        type="sts", access_key_id="STS.real", access_key_secret="real-secret",
        security_token="real-token"))
    got = AlibabaCloudCredentialsProvider(official).get_credentials()
    assert (got.access_key_id, got.access_key_secret, got.security_token) == (
        "STS.real", "real-secret", "real-token")
    assert got.expiration is not None


def test_provider_protocol_is_runtime_checkable() -> None:
    assert isinstance(StaticCredentialsProvider(creds(1)), CredentialsProvider)
    assert isinstance(EnvironmentCredentialsProvider(), CredentialsProvider)
    assert isinstance(AlibabaCloudCredentialsProvider(FakeAlibabaClient([])), CredentialsProvider)
    assert not isinstance(object(), CredentialsProvider)
