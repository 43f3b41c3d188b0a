"""Issue #14: a genuinely signed callback for an upload to ANOTHER bucket is refused.

OSS signs every customer's callbacks with one key, and a body template may hold constants.
Here the attacker uploads to their own bucket (in the same emulator, so the callback is
really signed by the emulator's OSS key) with a body that claims the victim's bucket and
object, captures the signed POST on their own receiver, and replays it to the victim's
callback server. The signature verifies; ``VerifiedCallback.confirm`` (and the FastAPI
dependency's ``confirm_with=``) refuses it, while the victim's genuine callback is accepted.

No ``from __future__ import annotations`` here: FastAPI must resolve the routes'
``Annotated[..., Depends(...)]`` parameters, which name a local dependency.
"""

import secrets
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import parse_qsl

import anyio
import attrs
import httpx
import pytest
from fastapi import Depends, FastAPI
from support.reliability_helpers import open_api

from oss_callback import AsyncBucket, Bucket, Callback, ServiceError
from oss_callback.fastapi import INVALID_CALLBACK_DETAIL, callback_dependency
from oss_callback.server import (
    CallbackBodyError,
    CallbackNotConfirmedError,
    CallbackSignatureError,
    CallbackVerifier,
    VerifiedCallback,
)
from oss_callback.testing import CallbackReceiver, OSSEmulator, ReceivedCallback, ServeASGI

VICTIM = "victim-bucket"
ATTACKER = "attacker-bucket"
PAID = "videos/paid.mp4"
PAID_DATA = b"premium video bytes " * 50  # 1000 bytes
TEMPLATE = "bucket=${bucket}&object=${object}&size=${size}&etag=${etag}"


@attrs.frozen
class Replayable:
    """A callback request exactly as a receiver got it, ready to send again."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, received: ReceivedCallback) -> "Replayable":
        return cls(received.path, received.query, dict(received.headers), received.body)

    def verify(self, verifier: CallbackVerifier, **changes: Any) -> VerifiedCallback:
        me = attrs.evolve(self, **changes)
        return verifier.verify_sync("POST", me.path, me.query, me.headers, me.body)

    def send_headers(self, **overrides: str) -> dict[str, str]:
        keep = ("authorization", "x-oss-pub-key-url", "content-type")
        return {**{k: v for k, v in self.headers.items() if k in keep}, **overrides}


@attrs.define
class World:
    emu: OSSEmulator
    receiver: CallbackReceiver  # the attacker's own callback server
    paid_etag: str

    def verifier(self) -> CallbackVerifier:
        """The victim's verifier: fetches the emulator's key like a real deployment."""
        return CallbackVerifier(allowed_key_hosts=(httpx.URL(self.emu.endpoint).netloc.decode(),))

    def bucket(self, name: str = VICTIM, **overrides: Any) -> Bucket:
        kwargs: dict[str, Any] = {"access_key_id": self.emu.access_key_id,
                                  "access_key_secret": self.emu.access_key_secret,
                                  "region": self.emu.region, **overrides}
        return Bucket(name, self.emu.endpoint, **kwargs)

    def async_bucket(self, name: str = VICTIM) -> AsyncBucket:
        return AsyncBucket(name, self.emu.endpoint, self.emu.access_key_id,
                           self.emu.access_key_secret, region=self.emu.region)

    def upload(self, bucket: str, key: str, data: bytes, callback: Callback) -> Any:
        async def go() -> Any:
            async with open_api(self.emu, bucket, "async") as api:
                return await api.put_object(key, data, callback=callback)

        return anyio.run(go)

    def attack(self, body: str, *, key: str = "innocent.bin", data: bytes = b"cheap",
               body_type: str = "application/x-www-form-urlencoded",
               path: str = "/oss-callback") -> Replayable:
        """Upload to the attacker's bucket with ``body``; the callback OSS signed for it."""
        before = len(self.receiver.received)
        self.upload(ATTACKER, key, data, Callback(self.receiver.url + path, body=body,
                                                  body_type=body_type))
        return Replayable.of(self.receiver.wait_for(before + 1)[-1])


@pytest.fixture
def world(oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver) -> World:
    oss_emulator.create_bucket(VICTIM)
    oss_emulator.create_bucket(ATTACKER)
    with Bucket(VICTIM, oss_emulator.endpoint, oss_emulator.access_key_id,
                oss_emulator.access_key_secret, region=oss_emulator.region) as victim:
        etag = victim.put_object(PAID, PAID_DATA).etag  # the victim's own, earlier upload
    return World(oss_emulator, callback_receiver, etag)


class VictimApp:
    """The victim's FastAPI callback server; ``confirm_with=None`` is the unsafe one."""

    def __init__(self, verifier: CallbackVerifier, confirm_with: Bucket | None,
                 **dependency_options: Any) -> None:
        self.calls: list[VerifiedCallback] = []
        self.app = FastAPI()
        verified = callback_dependency(verifier, confirm_with=confirm_with,
                                       **dependency_options)
        calls = self.calls

        @self.app.post("/oss-callback")
        async def on_upload(cb: Annotated[VerifiedCallback, Depends(verified)]
                            ) -> dict[str, Any]:
            calls.append(cb)
            return {"Status": "OK", "object": cb["object"],
                    "stored_size": None if cb.confirmed is None else cb.confirmed.size}


@pytest.fixture
def victim_bucket(world: World) -> Iterator[Bucket]:
    with world.bucket() as bucket:
        yield bucket


# --------------------------------------------------------------------------- the attack


def test_cross_account_replay_is_refused_and_the_genuine_callback_accepted(
    world: World, victim_bucket: Bucket
) -> None:
    verifier = world.verifier()
    safe = VictimApp(verifier, victim_bucket)
    unsafe = VictimApp(verifier, None)
    # The attacker's upload goes to THEIR bucket; the constant body claims the victim's.
    forged = world.attack(f"bucket={VICTIM}&object={PAID}&size=1048576&etag=" + "A" * 32)
    assert forged.verify(verifier).fields["bucket"] == VICTIM  # genuinely signed by "OSS"

    with ServeASGI(safe.app) as safe_srv, ServeASGI(unsafe.app) as unsafe_srv:
        genuine = world.upload(VICTIM, "videos/new.mp4", b"fresh upload",
                               Callback(safe_srv.url + "/oss-callback", body=TEMPLATE))
        with httpx.Client(trust_env=False, timeout=30) as http:
            refused = http.post(safe_srv.url + forged.path, content=forged.body,
                                headers=forged.send_headers())
            accepted_unsafely = http.post(unsafe_srv.url + forged.path, content=forged.body,
                                          headers=forged.send_headers())

    # The genuine callback went through, confirmed against the stored object.
    assert genuine.callback_json() == {"Status": "OK", "object": "videos/new.mp4",
                                       "stored_size": 12}
    (seen,) = safe.calls
    assert seen.confirmed is not None and seen.confirmed.etag == genuine.etag
    # The replay is refused before the handler runs...
    assert refused.status_code == 400
    assert refused.json() == {"detail": INVALID_CALLBACK_DETAIL}
    # ...while a server that only checks the signature takes it (the attack is real).
    assert accepted_unsafely.status_code == 200
    assert [c.fields["object"] for c in unsafe.calls] == [PAID]


@pytest.mark.parametrize(
    ("body", "reason_text"),
    [
        pytest.param("bucket=${bucket}&object=${object}&size=${size}&etag=${etag}",
                     f"bucket '{ATTACKER}'", id="honest-template-names-the-attackers-bucket"),
        pytest.param(f"bucket={VICTIM}&object=videos/ghost.mp4&size=5", "does not exist",
                     id="object-not-in-the-victims-bucket"),
        pytest.param(f"object={PAID}&size=1048576", "size '1048576'", id="wrong-size"),
        pytest.param(f"bucket={VICTIM}&object={PAID}&size=1000&etag=" + "0" * 32,
                     "etag", id="right-size-wrong-etag"),
        pytest.param(f"object={PAID}&crc64=12345", "crc64", id="wrong-crc64"),
        pytest.param("bucket=${bucket}&size=1000", "no object field", id="no-object"),
        pytest.param("object=%2Fetc%2Fpasswd", "not a valid object key", id="invalid-key"),
    ],
)
@pytest.mark.parametrize("how", ["async", "sync", "async-with-sync-bucket"])
async def test_confirm_refuses_a_replayed_claim(
    world: World, body: str, reason_text: str, how: str
) -> None:
    forged = await anyio.to_thread.run_sync(world.attack, body)
    cb = await anyio.to_thread.run_sync(forged.verify, world.verifier())
    before = len(world.emu.requests)

    async def confirm() -> None:
        if how == "async":
            async with world.async_bucket() as bucket:
                await cb.confirm(bucket)
        else:
            with world.bucket() as sync_bucket:
                if how == "sync":
                    await anyio.to_thread.run_sync(cb.confirm_sync, sync_bucket)
                else:  # await cb.confirm() with a sync Bucket runs it in a worker thread
                    await cb.confirm(sync_bucket)

    with pytest.raises(CallbackNotConfirmedError) as info:
        await confirm()
    assert info.value.reason == "not_confirmed"
    assert reason_text in str(info.value)
    assert isinstance(info.value, CallbackSignatureError)  # one except clause covers all
    heads = [r for r in world.emu.requests[before:] if r.operation == "HeadObject"]
    needs_head = not any(s in reason_text for s in ("bucket '", "no object", "not a valid"))
    assert len(heads) == (1 if needs_head else 0)  # refused claims cost no request


@pytest.mark.parametrize("how", ["async", "sync"])
async def test_confirm_accepts_the_genuine_callback_and_returns_the_head(
    world: World, how: str
) -> None:
    with ServeASGI(VictimApp(world.verifier(), None).app) as srv:
        result = await anyio.to_thread.run_sync(
            world.upload, VICTIM, "videos/mine.mp4", b"twelve bytes",
            Callback(srv.url + "/oss-callback",
                     body=TEMPLATE + "&crc64=${crc64}&mimeType=${mimeType}"))
    assert result.callback_json()["object"] == "videos/mine.mp4"
    received = [c for c in world.emu.callbacks if c.url.startswith(srv.url)]
    assert len(received) == 1
    cb = world.verifier().verify_sync("POST", "/oss-callback", "", received[0].headers,
                                      received[0].body)
    if how == "async":
        async with world.async_bucket() as bucket:
            head = await cb.confirm(bucket, require=("bucket", "size", "etag", "crc64"))
    else:
        with world.bucket() as sync_bucket:
            head = await anyio.to_thread.run_sync(cb.confirm_sync, sync_bucket)
    assert (head.key, head.size, head.etag, head.crc64) == (
        "videos/mine.mp4", 12, result.etag, result.crc64)


async def test_confirm_checks_json_bodies_too(world: World) -> None:
    with ServeASGI(VictimApp(world.verifier(), None).app) as srv:
        result = await anyio.to_thread.run_sync(
            world.upload, VICTIM, "j.bin", b"json!",
            Callback(srv.url + "/oss-callback", body_type="application/json",
                     body='{"bucket":${bucket},"object":${object},"size":${size},'
                          '"etag":${etag}}'))
    (record,) = [c for c in world.emu.callbacks if c.url.startswith(srv.url)]
    cb = world.verifier().verify_sync("POST", "/oss-callback", "", record.headers, record.body)
    assert cb.fields["size"] == 5  # a JSON number
    async with world.async_bucket() as bucket:
        assert (await cb.confirm(bucket, require=("size", "etag"))).etag == result.etag
        lie = attrs.evolve(cb, fields={**cb.fields, "size": 6})
        with pytest.raises(CallbackNotConfirmedError, match="size 6"):
            await lie.confirm(bucket)
        not_a_number = attrs.evolve(cb, fields={**cb.fields, "size": True})
        with pytest.raises(CallbackNotConfirmedError):
            await not_a_number.confirm(bucket)


async def test_require_refuses_bodies_without_the_fields_your_template_has(
    world: World,
) -> None:
    # The attacker leaves out the etag they can't know: the object exists, the size is
    # public... but the app's own template always carries the etag.
    forged = await anyio.to_thread.run_sync(world.attack, f"object={PAID}&size=1000")
    cb = await anyio.to_thread.run_sync(forged.verify, world.verifier())
    async with world.async_bucket() as bucket:
        head = await cb.confirm(bucket)  # what it claims is true: the object is there
        assert head.size == 1000
        with pytest.raises(CallbackNotConfirmedError, match="lacks etag") as info:
            await cb.confirm(bucket, require=("size", "etag"))
        assert info.value.reason == "not_confirmed"
        with pytest.raises(ValueError, match="mimeType"):
            await cb.confirm(bucket, require=("mimeType",))


async def test_confirm_failed_when_the_head_itself_fails(world: World) -> None:
    forged = await anyio.to_thread.run_sync(world.attack, f"object={PAID}")
    cb = await anyio.to_thread.run_sync(forged.verify, world.verifier())
    with world.bucket(access_key_secret="not-the-secret") as wrong_keys, \
            pytest.raises(CallbackNotConfirmedError) as info:
        await cb.confirm(wrong_keys)
    assert info.value.reason == "confirm_failed"
    assert isinstance(info.value.__cause__, ServiceError)
    assert info.value.__cause__.status == 403
    assert "not-the-secret" not in str(info.value)


def test_confirm_sync_needs_a_sync_bucket(world: World) -> None:
    cb = world.attack(f"object={PAID}").verify(world.verifier())

    async def check() -> None:
        async with world.async_bucket() as bucket:
            with pytest.raises(TypeError, match=r"await cb\.confirm"):
                cb.confirm_sync(bucket)  # type: ignore[arg-type]

    anyio.run(check)


def test_dependency_options_are_checked(victim_bucket: Bucket) -> None:
    with pytest.raises(TypeError, match="confirm_with"):
        callback_dependency(CallbackVerifier(), confirm_require=("etag",))
    with pytest.raises(ValueError, match="mimeType"):
        callback_dependency(CallbackVerifier(), confirm_with=victim_bucket,
                            confirm_require=("mimeType",))
    with pytest.raises(TypeError, match="AsyncBucket or Bucket"):
        callback_dependency(CallbackVerifier(), confirm_with="victim-bucket")  # type: ignore[arg-type]


def test_dependency_confirm_require_refuses_a_body_without_etag(
    world: World, victim_bucket: Bucket
) -> None:
    forged = world.attack(f"object={PAID}&size=1000")  # true, but no etag
    lenient = VictimApp(world.verifier(), victim_bucket)
    strict = VictimApp(world.verifier(), victim_bucket, confirm_require=("size", "etag"))
    with ServeASGI(lenient.app) as a, ServeASGI(strict.app) as b, \
            httpx.Client(trust_env=False, timeout=30) as http:
        ok = http.post(a.url + forged.path, content=forged.body, headers=forged.send_headers())
        refused = http.post(b.url + forged.path, content=forged.body,
                            headers=forged.send_headers())
    assert ok.json() == {"Status": "OK", "object": PAID, "stored_size": 1000}
    assert refused.status_code == 400
    assert strict.calls == []


# --------------------------------------------------------------------------- the other option


@pytest.mark.parametrize("attempt", ["genuine", "replayed-without-secret",
                                     "replayed-with-a-guess", "trailing-newline",
                                     "nothing-issued"])
def test_per_upload_secret(world: World, victim_bucket: Bucket, attempt: str) -> None:
    issued = {"videos/up.mp4": secrets.token_urlsafe(16)}  # what the app handed out
    template = "object=${object}&size=${size}&nonce=${x:nonce}"
    if attempt == "genuine":
        world.upload(VICTIM, "videos/up.mp4", b"data", Callback(
            world.receiver.url + "/oss-callback", body=template,
            variables={"x:nonce": issued["videos/up.mp4"]}))
        replay = Replayable.of(world.receiver.wait_for(1)[-1])
    elif attempt == "replayed-without-secret":
        replay = world.attack("object=videos/up.mp4&size=4")
    elif attempt == "replayed-with-a-guess":
        replay = world.attack("object=videos/up.mp4&size=4&nonce=" + secrets.token_urlsafe(16))
    elif attempt == "trailing-newline":
        replay = world.attack("object=videos/up.mp4&size=4&nonce="
                              + issued["videos/up.mp4"] + "%0A")
    else:
        replay = world.attack("object=videos/other.mp4&nonce=")
    cb = replay.verify(world.verifier())
    expected = issued.get(cb["object"])
    if attempt == "genuine":
        cb.check_secret("nonce", expected)
        assert cb.confirm_sync(victim_bucket).size == 4  # and both checks can be combined
        return
    with pytest.raises(CallbackNotConfirmedError) as info:
        cb.check_secret("nonce", expected)
    assert info.value.reason == "not_confirmed"
    assert issued["videos/up.mp4"] not in str(info.value)


# --------------------------------------------------------------------------- Content-Type


def test_json_body_replayed_as_a_form_is_refused(world: World) -> None:
    # The attacker's object name smuggles form fields into a JSON body OSS signs as JSON.
    key = f"x&bucket={VICTIM}&object={PAID}&size=1&"
    forged = world.attack('{"object":${object},"n":1}', key=key,
                          body_type="application/json")
    assert forged.headers["content-type"].startswith("application/json")
    assert dict(parse_qsl(forged.body.decode()))["bucket"] == VICTIM  # what a form parse gives

    verifier = world.verifier()
    as_json = forged.verify(verifier)  # as signed: one harmless field
    assert as_json.fields == {"object": key, "n": 1}
    for content_type in ("application/x-www-form-urlencoded", ""):
        headers = {k: v for k, v in forged.headers.items() if k != "content-type"}
        if content_type:
            headers["content-type"] = content_type
        with pytest.raises(CallbackBodyError) as info:
            forged.verify(verifier, headers=headers)
        assert info.value.reason == "body_type_mismatch"
    # A verifier told what the app's callbacks look like refuses it outright.
    form_only = attrs.evolve(verifier, expected_body_type="application/x-www-form-urlencoded")
    with pytest.raises(CallbackBodyError) as strict:
        forged.verify(form_only)
    assert strict.value.reason == "body_type_mismatch"


# --------------------------------------------------------------------------- the README


def test_readme_example_confirms_and_refuses_the_replay(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The README's "Receiving callbacks" code (the reference callback server's) and its
    wiring, pointed at the emulator (its URL, credentials from the environment), refuses
    the attacker's replay and records the genuine upload with the stored size and etag."""
    import re
    import sqlite3
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (region,) = [b for b in blocks if "def create_app(" in b]
    (wiring,) = [b for b in blocks if "app = create_app(" in b]
    code = region + (wiring.replace("http://127.0.0.1:9000", world.emu.endpoint)
                     .replace('"examplebucket"', repr(VICTIM)))
    for name, value in {"OSS_ACCESS_KEY_ID": world.emu.access_key_id,
                        "OSS_ACCESS_KEY_SECRET": world.emu.access_key_secret,
                        "OSS_ENDPOINT": world.emu.endpoint,
                        "OSS_REGION": world.emu.region}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_receiving_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    forged = world.attack(f"object={PAID}&size=1048576&etag=" + "A" * 32)
    try:
        with ServeASGI(namespace["app"]) as srv:
            result = world.upload(VICTIM, "from-readme", b"xyz", Callback(
                srv.url + "/oss-callback", body=TEMPLATE))
            with httpx.Client(trust_env=False, timeout=30) as http:
                replayed = http.post(srv.url + forged.path, content=forged.body,
                                     headers=forged.send_headers())
    finally:
        namespace["bucket"].close()
    with sqlite3.connect(tmp_path / "uploads.db") as db:
        rows = db.execute("SELECT bucket, object, size, etag FROM uploads").fetchall()
    db.close()
    assert result.callback_json() == {"Status": "OK", "bucket": VICTIM, "object": "from-readme",
                                      "size": 3, "etag": result.etag}
    assert replayed.status_code == 400
    assert replayed.json() == {"Status": "Refused", "reason": "not_confirmed"}
    assert rows == [(VICTIM, "from-readme", 3, result.etag)]


# --------------------------------------------------------------------------- the demo's app


def test_demo_app_confirms_when_given_the_bucket(world: World, victim_bucket: Bucket) -> None:
    import sqlite3

    from oss_callback.cli._demo_app import make_callback_app

    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE uploads (id INTEGER PRIMARY KEY, bucket TEXT, object TEXT,"
               " size INTEGER, etag TEXT, crc64 TEXT, uid TEXT)")
    seen: list[dict[str, Any]] = []
    app = make_callback_app(world.verifier(), db, seen, confirm_with=victim_bucket)
    forged = world.attack(f"bucket={VICTIM}&object={PAID}&size=1048576&etag=" + "A" * 32)
    try:
        with ServeASGI(app) as srv:
            result = world.upload(VICTIM, "demo.bin", b"demo bytes", Callback(
                srv.url + "/oss-callback", body=TEMPLATE + "&crc64=${crc64}"))
            with httpx.Client(trust_env=False, timeout=30) as http:
                replayed = http.post(srv.url + forged.path, content=forged.body,
                                     headers=forged.send_headers())
        rows = db.execute("SELECT bucket, object, size, etag FROM uploads").fetchall()
    finally:
        db.close()
    assert result.callback_json() == {"Status": "OK", "recorded_id": 1}
    assert replayed.status_code == 400
    assert rows == [(VICTIM, "demo.bin", 10, result.etag)]
    assert [s["object"] for s in seen] == ["demo.bin"]
