"""Bad input: each is one clear error, with no side effect (nothing stored, no upload left,
usually no request at all), for both facades.

Also here: checkpoint files as input (foreign, newer, malformed; round-trip properties) and
servers that are not OSS (HTML for everything, a 50 MB error body, malformed error XML,
bytes that are not HTTP).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.facades import Api
from support.helpers import HTTPX_STOPPED_READ
from support.reliability_helpers import (
    PART,
    LocalHTTPServer,
    MiB,
    RawTCPServer,
    Seen,
    assert_stored_exactly,
    await_until,
    free_port,
    open_api,
    records,
    send_answer,
    write_file,
)

from oss_callback import (
    AsyncClient,
    Callback,
    CheckpointError,
    FileChangedError,
    OSSError,
    RequestError,
    ResponseError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.client._body import FILE_CHUNK
from oss_callback.client._checkpoint import VERSION as CHECKPOINT_VERSION
from oss_callback.client._checkpoint import (
    Checkpoint,
    FileIdentity,
    PartRecord,
    encode_payload,
    read_checkpoint,
    write_checkpoint,
)
from oss_callback.client._resume import _headers_digest
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._options import upload_headers
from oss_callback.testing import OSSEmulator

BUCKET = "test-bucket"


@pytest.fixture(params=["async", "sync"])
def facade(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def assert_untouched(emu: OSSEmulator) -> None:
    """No request reached the emulator: nothing stored, no upload started or aborted."""
    assert emu.requests == []
    assert emu.list_keys(BUCKET) == []
    assert emu.list_uploads() == []


class Stop(Exception):
    pass


# --------------------------------------------------------------------------- keys


BAD_KEYS = [
    pytest.param("", ValueError, id="empty"),
    pytest.param("/absolute", ValueError, id="leading-slash"),
    pytest.param("\\windows", ValueError, id="leading-backslash"),
    pytest.param("nul\x00byte", ValueError, id="nul"),
    pytest.param("line\nbreak", ValueError, id="newline"),
    pytest.param("x" * 1024, ValueError, id="1024-bytes"),
    pytest.param("é" * 512, ValueError, id="1024-utf8-bytes"),
    pytest.param("lone\ud800surrogate", ValueError, id="lone-surrogate"),
    pytest.param(b"bytes-key", TypeError, id="bytes"),
    pytest.param(None, TypeError, id="none"),
]


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
async def test_invalid_key_fails_before_any_request(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, key: Any, error: type[Exception]
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    with pytest.raises(error, match="key"):
        await api.put_object(key, b"data")
    with pytest.raises(error, match="key"):
        await api.put_object(key, file=src)
    with pytest.raises(error, match="key"):
        await api.resumable_upload(key, src, part_size=PART, checkpoint_file=ckpt)
    assert not ckpt.exists()
    assert_untouched(oss_emulator)


# --------------------------------------------------------------------------- files


async def test_a_directory_fifo_or_missing_file_fails_before_any_request(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.bin"
    for call in (lambda p: api.put_object("k", file=p),
                 lambda p: api.resumable_upload("k", p, checkpoint_file=tmp_path / "c.json")):
        with pytest.raises(IsADirectoryError, match="directory"):
            await call(folder)  # type: ignore[no-untyped-call]
        with pytest.raises(ValueError, match="not a regular file"):
            await call(fifo)  # type: ignore[no-untyped-call]  # opening it would block forever
        with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
            await call(missing)  # type: ignore[no-untyped-call]
    assert not (tmp_path / "c.json").exists()
    assert_untouched(oss_emulator)


async def test_checkpoint_file_that_is_a_directory_fails_before_any_request(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART)
    with pytest.raises(CheckpointError, match="directory"):
        await api.resumable_upload("k", src, part_size=PART, checkpoint_file=tmp_path)
    assert_untouched(oss_emulator)


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading")
async def test_unreadable_file_fails_before_any_request(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "secret.bin"
    write_file(src, 3 * PART)
    src.chmod(0)
    try:
        with pytest.raises(PermissionError, match="not readable"):
            await api.put_object("k", file=src)
        with pytest.raises(PermissionError, match="not readable"):
            await api.resumable_upload("k", src, part_size=PART,
                                       checkpoint_file=tmp_path / "c.json")
    finally:
        src.chmod(0o600)
    assert_untouched(oss_emulator)


def _change(path: Path, how: str) -> None:
    if how == "grows":
        with path.open("ab") as f:
            f.write(b"appended while uploading")
    elif how == "shrinks":
        os.truncate(path, path.stat().st_size // 2)
    else:  # rewritten in place: same size, new bytes, new mtime
        with path.open("r+b") as f:
            f.write(os.urandom(64))


@pytest.mark.parametrize("how", ["grows", "shrinks", "rewritten"])
async def test_put_object_file_changing_during_upload_stores_nothing(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, how: str
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * FILE_CHUNK + 17)  # several reads: the change lands between two
    past = time.time() - 3600
    os.utime(src, (past, past))  # so an in-place rewrite visibly changes the mtime
    changed: list[bool] = []

    def change_once(done: int, total: int | None) -> None:
        if done >= FILE_CHUNK and not changed:
            changed.append(True)
            _change(src, how)

    with pytest.raises(FileChangedError, match=str(src)):
        await api.put_object("changing.bin", file=src, progress=change_once)
    assert changed
    await await_until(lambda: len(records(oss_emulator, "PutObject")) == 1,
                      what="the emulator to see the aborted request")
    assert records(oss_emulator, "PutObject")[0].status != 200
    assert oss_emulator.head_object(BUCKET, "changing.bin") is None


@pytest.mark.parametrize("how", ["grows", "shrinks"])
async def test_resumable_file_changing_during_upload_then_rerun_restarts_cleanly(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, how: str
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    changed: list[bool] = []

    def change_once(done: int, total: int | None) -> None:
        if done >= PART and not changed:
            changed.append(True)
            _change(src, how)

    with pytest.raises(FileChangedError, match="changed"):
        await api.resumable_upload("shrinks.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=change_once)
    assert oss_emulator.head_object(BUCKET, "shrinks.bin") is None
    stale = json.loads(ckpt.read_text())["payload"]["upload_id"]
    assert oss_emulator.list_uploads(BUCKET) == [stale]  # kept for the rerun to decide
    new_content = src.read_bytes()
    result = await api.resumable_upload("shrinks.bin", src, part_size=PART,
                                        checkpoint_file=ckpt)
    assert result.upload_id != stale
    assert_stored_exactly(oss_emulator, BUCKET, "shrinks.bin", new_content)
    assert oss_emulator.list_uploads(BUCKET) == []  # the stale upload was aborted
    assert not ckpt.exists()


async def test_non_utf8_file_name_uploads_with_an_explicit_checkpoint(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.bin"))  # latin-1 name on Linux
    data = write_file(src, 3 * PART)
    await api.resumable_upload("latin1.bin", src, part_size=PART,
                               checkpoint_file=tmp_path / "c.json")
    assert_stored_exactly(oss_emulator, BUCKET, "latin1.bin", data)


async def test_non_utf8_file_name_uploads_with_the_default_checkpoint(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSS_CALLBACK_STATE_DIR", str(tmp_path / "state"))
    src = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.bin"))
    data = write_file(src, 3 * PART)
    await api.resumable_upload("latin1.bin", src, part_size=PART)
    assert_stored_exactly(oss_emulator, BUCKET, "latin1.bin", data)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(endpoint: str, bucket: str, key: str, src: Path) -> Checkpoint:
    return Checkpoint(
        endpoint=endpoint, bucket=bucket, key=key, upload_id="SOMEONE-ELSES-UPLOAD",
        file=FileIdentity.of(str(src)), part_size=PART, headers_digest=_headers_digest({}),
        callback_digest=None,
        parts={1: PartRecord(number=1, offset=0, size=PART, etag="E" * 32, crc64=1)},
    )


# "endpoint" is no longer among them: a checkpoint belongs to the upload (bucket, key, local
# file), not to the endpoint string it went through (issue #15; the next test).
@pytest.mark.parametrize("other", ["bucket", "key", "file"])
async def test_checkpoint_of_another_upload_is_refused_and_left_alone(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, other: str
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART)
    twin = tmp_path / "twin.bin"
    shutil.copy(src, twin)
    endpoint = api.bucket.client.endpoint
    fields = {"endpoint": endpoint, "bucket": BUCKET, "key": "mine.bin", "src": src}
    fields[other] = {"bucket": "another-bucket", "key": "theirs.bin", "file": twin}[other]
    if other == "file":
        fields["src"] = fields.pop("file")
    ckpt = tmp_path / "ckpt.json"
    write_checkpoint(str(ckpt), _checkpoint(**fields))
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="another upload") as info:
        await api.resumable_upload("mine.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert str(ckpt) in str(info.value)
    assert ckpt.read_bytes() == before  # not rewritten, not deleted
    assert_untouched(oss_emulator)  # and above all: the other upload was not aborted


async def test_checkpoint_written_through_another_endpoint_is_used_not_refused(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    # Until issue #15 this checkpoint was refused ("belongs to another upload") because its
    # endpoint string differed. Another endpoint may reach the same bucket (internal vs
    # public, accelerate, a CNAME, a proxy), so its upload id is now looked up here; this
    # one is unknown here, so the upload restarts cleanly (nothing aborted: there is nothing
    # to abort; tests/client/test_resumable_endpoint.py resumes a live one).
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    checkpoint = _checkpoint("http://127.0.0.1:1", BUCKET, "mine.bin", src)
    # the headers this upload sends (a Content-Type is always among them): only the endpoint
    # differs from this run's
    checkpoint.headers_digest = _headers_digest(upload_headers(("mine.bin", str(src))))
    write_checkpoint(str(ckpt), checkpoint)
    result = await api.resumable_upload("mine.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "mine.bin", data)
    (listed,) = records(oss_emulator, "ListParts")
    assert ("uploadId", "SOMEONE-ELSES-UPLOAD") in listed.query  # looked up, not refused
    assert records(oss_emulator, "AbortMultipartUpload") == []
    assert result.upload_id not in (None, "SOMEONE-ELSES-UPLOAD")
    assert len(records(oss_emulator, "UploadPart")) == 3
    assert not ckpt.exists()


def _payload(tmp_path: Path) -> dict[str, Any]:
    src = tmp_path / "src.bin"
    if not src.exists():
        write_file(src, 3 * PART)
    return _checkpoint("http://127.0.0.1:1", BUCKET, "k", src).to_payload()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda doc: doc.update(version=CHECKPOINT_VERSION + 1), "newer"),
        (lambda doc: doc.update(version=99, payload={"future": "format"}), "newer"),
        (lambda doc: doc.update(format="something.else"), "not an oss_callback"),
        (lambda doc: doc["payload"].update(upload_id=["not", "a", "string"]) or doc.update(
            checksum=None), "corrupt"),
    ],
    ids=["newer-version", "much-newer-version", "other-format", "bad-checksum"],
)
async def test_unusable_checkpoint_is_refused_and_nothing_is_touched(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, mutate: Any, match: str
) -> None:
    doc = json.loads(encode_payload(_payload(tmp_path)))
    mutate(doc)
    ckpt = tmp_path / "ckpt.json"
    ckpt.write_text(json.dumps(doc))
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=match):
        await api.resumable_upload("k", tmp_path / "src.bin", part_size=PART,
                                   checkpoint_file=ckpt)
    assert ckpt.read_bytes() == before
    assert_untouched(oss_emulator)


PART_RECORDS = st.builds(
    PartRecord,
    number=st.integers(1, 10_000),
    offset=st.integers(0, 10_000 * 5 * 1024**3),
    size=st.integers(1, 5 * 1024**3),
    etag=st.text(max_size=40),
    crc64=st.integers(0, 2**64 - 1),
)


CHECKPOINTS = st.builds(
    Checkpoint,
    endpoint=st.text(max_size=60),
    bucket=st.text(max_size=63),
    key=st.text(min_size=1, max_size=300),
    upload_id=st.text(max_size=64),
    file=st.builds(
        FileIdentity,
        # file names need not be UTF-8 on Linux: os.fsdecode gives lone surrogates
        path=st.text(st.characters(codec="utf-8") | st.sampled_from("\udce9\udcff"),
                     max_size=200),
        size=st.integers(0, 48_800 * 10**9),
        mtime_ns=st.integers(0, 2**63),
        inode=st.integers(0, 2**64),
    ),
    part_size=st.integers(100 * 1024, 5 * 1024**3),
    headers_digest=st.text(max_size=64),
    callback_digest=st.none() | st.text(max_size=64),
    parts=st.lists(PART_RECORDS, max_size=30, unique_by=lambda p: p.number).map(
        lambda parts: {p.number: p for p in parts}),
)


@settings(max_examples=150, deadline=None)
@given(ckpt=CHECKPOINTS)
def test_checkpoint_encode_decode_round_trips(ckpt: Checkpoint) -> None:
    data = ckpt.encode()
    assert Checkpoint.decode(data) == ckpt
    assert encode_payload(ckpt.to_payload()) == data  # the worker-thread snapshot path


@settings(max_examples=20, deadline=None)
@given(ckpt=CHECKPOINTS)
def test_checkpoint_file_round_trips_atomically_with_mode_0600(ckpt: Checkpoint) -> None:
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "c.json")
        write_checkpoint(target, ckpt)
        write_checkpoint(target, ckpt.to_payload())  # replaced, not appended to
        assert read_checkpoint(target) == ckpt
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
        assert os.listdir(folder) == ["c.json"]  # no temp file left behind


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["endpoint", "bucket", "key", "upload_id", "file", "part_size", "headers_digest",
          "callback_digest", "parts"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoding_any_checksummed_payload_is_a_checkpoint_or_a_checkpoint_error(
    data: st.DataObject,
) -> None:
    payload: dict[str, Any] = _checkpoint(
        "http://e", "b", "k", Path(__file__)).to_payload()
    payload["parts"][0]["number"] = 1
    for field in data.draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        payload[field] = data.draw(JSON_VALUES, label=field)
    if data.draw(st.booleans(), label="mangle a part"):
        payload["parts"] = [data.draw(
            st.fixed_dictionaries(dict.fromkeys(("number", "offset", "size", "etag", "crc64"),
                                                JSON_VALUES)))]
    encoded = encode_payload(payload)  # a correct checksum: decode must look deeper
    message = "c.json"
    try:
        Checkpoint.decode(encoded, "c.json")
    except CheckpointError as e:
        message = str(e)
    assert "c.json" in message  # a CheckpointError names the file; anything else escapes


@pytest.mark.parametrize("case", ["infinite-part-size", "infinite-part-number", "deep-nesting"])
def test_hostile_checkpoint_content_is_a_checkpoint_error(tmp_path: Path, case: str) -> None:
    payload = _payload(tmp_path)
    if case == "infinite-part-size":
        data = encode_payload({**payload, "part_size": float("inf")})
    elif case == "infinite-part-number":
        payload["parts"][0]["number"] = float("inf")
        data = encode_payload(payload)
    else:
        data = b'{"format": "oss_callback.resumable_upload", "payload": ' + b"[" * 100_000
    path = tmp_path / "c.json"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path))


# --------------------------------------------------------------------------- not OSS


def _html(handler: Any, seen: Seen) -> None:
    send_answer(handler, 200, b"<html><body><h1>Welcome to nginx!</h1></body></html>")


async def test_multipart_upload_to_a_non_oss_endpoint_is_a_response_error(
    facade: str, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    with LocalHTTPServer(_html) as server:
        async with open_api(None, "b-1", facade, endpoint=server.url, access_key_id="ak",
                            access_key_secret="sk") as api:
            with pytest.raises(ResponseError, match="html"):
                await api.resumable_upload("k", src, part_size=PART, checkpoint_file=ckpt)
    assert not ckpt.exists()  # nothing to resume: no upload id was ever obtained
    assert [s.method for s in server.seen] == ["POST"]  # no part was sent anywhere




@pytest.mark.parametrize("call", ["put_object", "put_object+callback", "get_object"])
async def test_a_non_oss_endpoint_is_never_taken_for_oss(facade: str, call: str) -> None:
    with LocalHTTPServer(_html) as server:
        async with open_api(None, "b-1", facade, endpoint=server.url, access_key_id="ak",
                            access_key_secret="sk") as api:
            if call == "put_object":
                request = api.put_object("k", b"data")
            elif call == "put_object+callback":
                request = api.put_object("k", b"data", callback=Callback("http://cb.example"))
            else:
                request = api.get_object("k")
            with pytest.raises(OSSError):
                await request


def _huge_error(handler: Any, seen: Seen) -> None:
    chunk = b"A" * MiB
    head = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>"
    send_answer(handler, 500, (head, *(chunk for _ in range(50))),
                content_type="application/xml", length=len(head) + 50 * MiB)


@HTTPX_STOPPED_READ
async def test_a_50_mb_error_body_is_not_read_whole() -> None:
    with LocalHTTPServer(_huge_error) as server:
        async with AsyncClient(server.url, "ak", "sk", region="cn-hangzhou",
                               retry=RetryPolicy.no_wait()) as client:
            tracemalloc.start()
            started = time.monotonic()
            try:
                with pytest.raises(ServiceError) as info:
                    await client.get_bucket("b-1").put_object("k", b"data")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            elapsed = time.monotonic() - started
    assert info.value.status == 500
    assert len(str(info.value)) < 500 and "\n" not in str(info.value)
    assert len(server.seen) == 3  # retried as a 5xx, each answer abandoned early
    assert peak < 8 * MiB, f"peak {peak} bytes: the error body was buffered"
    assert elapsed < 10


MALFORMED_ERROR_BODIES = {
    "truncated-xml": b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Mess",
    # 1.2 KB that expand to 5 MB: under expat's own billion-laughs threshold
    "entity-bomb": (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "' + b"a" * 1000 + b'">'
                    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
                    b'<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
                    b"<Error><Code>&d;&d;&d;&d;&d;</Code></Error>"),
    "external-entity": (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM '
                        b'"file:///etc/passwd">]><Error><Code>&x;</Code></Error>'),
    "binary": bytes(range(256)) * 4,
    "not-utf8": b"<Error><Code>\xff\xfe</Code><Message>\xc3\x28</Message></Error>",
    "many-lines": b"<Error><Code>X</Code><Message>" + b"line\n" * 1000 + b"</Message></Error>",
    "empty": b"",
}




@pytest.mark.parametrize("body", [
    pytest.param(name)
    for name in MALFORMED_ERROR_BODIES
])
async def test_malformed_error_body_is_a_clear_service_error(body: str) -> None:
    payload = MALFORMED_ERROR_BODIES[body]

    def respond(handler: Any, seen: Seen) -> None:
        send_answer(handler, 403, payload, content_type="application/xml")

    with LocalHTTPServer(respond) as server:
        async with AsyncClient(server.url, "ak", "sk", region="cn-hangzhou",
                               retry=RetryPolicy.no_wait()) as client:
            with pytest.raises(ServiceError) as info:
                await client.get_bucket("b-1").put_object("k", b"data")
    err = info.value
    assert err.status == 403
    assert "\n" not in str(err)
    assert len(str(err)) <= len(payload) + 200  # never more than what was received
    assert "root:" not in repr(err.details)  # no external entity was resolved
    assert len(server.seen) == 1  # a 403 is not retried


@pytest.mark.parametrize(
    ("answer", "attempts"),
    [(b"SSH-2.0-OpenSSH_9.6\r\n", 3), (b"\x00\xff" * 100, 3), (None, 3),
     # a 200 arrived: the object may be stored, so no blind retry, but no success either
     (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nshort", 1)],
    ids=["ssh-banner", "binary", "closes-at-once", "truncated-200"],
)
async def test_a_server_that_does_not_speak_http_is_a_request_error(
    answer: bytes | None, attempts: int
) -> None:
    with RawTCPServer(answer) as server:
        async with AsyncClient(server.url, "ak", "sk", region="cn-hangzhou",
                               retry=RetryPolicy.no_wait(), timeout=5) as client:
            with pytest.raises(RequestError):
                await client.get_bucket("b-1").put_object("k", b"data")
    assert server.accepted == attempts  # transport failures are retried, then reported


async def test_nothing_listening_is_a_request_error_naming_the_endpoint() -> None:
    port = free_port()
    async with AsyncClient(f"http://127.0.0.1:{port}", "ak", "sk", region="cn-hangzhou",
                           retry=RetryPolicy.no_wait()) as client:
        with pytest.raises(RequestError, match=f"127.0.0.1:{port}"):
            await client.get_bucket("b-1").put_object("k", b"data")


async def test_malformed_crc_header_is_not_a_crash() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, headers=[(b"etag", b'"' + b"A" * 32 + b'"'),
                                            (b"x-oss-request-id", b"RID"),
                                            (b"x-oss-hash-crc64ecma", b"\xb2")])

    async with AsyncClient("https://oss-cn-hangzhou.aliyuncs.com", "ak", "sk",
                           transport=httpx.MockTransport(handler),
                           retry=RetryPolicy.no_wait()) as client:
        try:
            result = await client.get_bucket("b-1").put_object("k", b"data")
        except OSSError:
            return  # a clear error is fine
        assert result.crc64 in (None, crc64(b"data"))
