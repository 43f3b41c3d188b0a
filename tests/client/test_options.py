"""Typed upload options (``content_type``, ``metadata``, ``storage_class``, ``acl``,
``tagging``) and the Content-Type guessed from the key or file name.

Rules checked here and where they come from: metadata names (OSS error pages
0011-00000004/-00000002), the 8 KiB metadata total, storage classes and ACLs
(alibabacloud-oss-v2 ``StorageClassType``/``ObjectACLType``), tagging limits and characters
(PutObjectTagging, error page 0010-00000217), and oss2's ``utils.set_content_type`` (oss2 is
installed: its own guess is the oracle).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import oss2
import pytest
from support.facades import Api
from support.reliability_helpers import PART, open_api, records, write_file

from oss_callback.protocol._options import (
    ACLS,
    STORAGE_CLASSES,
    encode_tagging,
    guess_content_type,
    upload_headers,
)
from oss_callback.testing import OSSEmulator

BUCKET = "test-bucket"


class Stop(Exception):
    pass


# --------------------------------------------------------------------------- the helper


def test_every_option_becomes_its_header() -> None:
    h = upload_headers(
        "k.bin", content_type="text/plain; charset=utf-8", metadata={"Color": "blue", "n-1": ""},
        storage_class="IA", acl="public-read", tagging={"team": "a b", "x": "1+1=2"},
        headers={"Cache-Control": "no-cache"},
    )
    assert h == {
        "cache-control": "no-cache",
        "content-type": "text/plain; charset=utf-8",
        "x-oss-meta-color": "blue",  # OSS stores names lower-case: sent that way
        "x-oss-meta-n-1": "",
        "x-oss-storage-class": "IA",
        "x-oss-object-acl": "public-read",
        "x-oss-tagging": "team=a%20b&x=1%2B1%3D2",
    }


@pytest.mark.parametrize("value", STORAGE_CLASSES)
def test_storage_classes_are_oss_spelling_whatever_the_case(value: str) -> None:
    for given in (value, value.lower(), value.upper()):
        assert upload_headers(None, storage_class=given) == {"x-oss-storage-class": value}


def test_acls() -> None:
    assert ACLS == ("private", "public-read", "public-read-write", "default")
    for acl in ACLS:
        assert upload_headers(None, acl=acl.upper()) == {"x-oss-object-acl": acl}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"storage_class": "Glacier"}, "storage_class"),
        ({"storage_class": ""}, "storage_class"),
        ({"acl": "public"}, "acl"),
        ({"content_type": "text"}, "content_type"),
        ({"content_type": " text/plain"}, "content_type"),
        ({"content_type": "text/plain\r\nx-oss-acl: public-read"}, "content_type"),
        ({"content_type": "text/plain; charset=é"}, "content_type"),
        ({"metadata": {"my_key": "v"}}, "metadata name"),  # no underscore (0011-00000004)
        ({"metadata": {"my key": "v"}}, "metadata name"),
        ({"metadata": {"": "v"}}, "metadata name"),
        ({"metadata": {"名前": "v"}}, "metadata name"),
        ({"metadata": {"x-oss-meta-a": "v"}}, "without the 'x-oss-meta-' prefix"),
        ({"metadata": {"A": "1", "a": "2"}}, "differing only in case"),
        ({"metadata": {"a": "中文"}}, "urllib.parse.quote"),
        ({"metadata": {"a": "line\nbreak"}}, "control characters"),
        ({"metadata": {"a": " padded"}}, "leading/trailing spaces"),
        ({"metadata": {"a": "x" * 8200}}, "OSS allows at most 8192"),
        ({"tagging": {str(i): "v" for i in range(11)}}, "at most 10"),
        ({"tagging": {"": "v"}}, "1..128"),
        ({"tagging": {"k" * 129: "v"}}, "1..128"),
        ({"tagging": {"k": "v" * 257}}, "at most 256"),
        ({"tagging": {"a&b": "v"}}, "tagging key"),
        ({"tagging": {"k": "v?"}}, "tagging value"),
        ({"tagging": {"k": "tab\there"}}, "tagging value"),
    ],
)
def test_invalid_options_are_value_errors_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        upload_headers("k", **kwargs)


def test_limits_are_inclusive() -> None:
    tags = {f"k{i}": "v" * 256 for i in range(9)} | {"k" * 128: ""}
    assert len(parse_qsl(encode_tagging(tags), keep_blank_values=True)) == 10
    # 8 KiB of x-oss-meta-* names and values in all, no more
    h = upload_headers(None, metadata={"a": "x" * (8192 - len("x-oss-meta-a"))})
    assert len(h["x-oss-meta-a"]) == 8180
    with pytest.raises(ValueError, match="metadata is 8193 bytes"):
        upload_headers(None, metadata={"a": "x" * 8181})
    with pytest.raises(ValueError, match="metadata is"):  # raw x-oss-meta-* headers count too
        upload_headers(None, metadata={"a": "x" * 8000}, headers={"x-oss-meta-b": "y" * 500})


@pytest.mark.parametrize(
    ("kwargs", "wrong"),
    [({"metadata": {"a": 1}}, "metadata"), ({"tagging": "a=1"}, "tagging"),
     ({"metadata": ["a"]}, "metadata"), ({"storage_class": 1}, "storage_class"),
     ({"acl": b"private"}, "acl"), ({"content_type": b"text/plain"}, "content_type")],
)
def test_wrong_types_are_type_errors_naming_the_field(kwargs: dict[str, Any], wrong: str) -> None:
    with pytest.raises(TypeError, match=wrong):
        upload_headers("k", **kwargs)


def test_tagging_round_trips_through_url_decoding() -> None:
    tags = {"path": "a/b:c", "sum": "1+1=2", "space": "x y", "标签": "值", "empty": ""}
    encoded = encode_tagging(tags)
    assert " " not in encoded and "+" not in encoded  # "+" would read back as a space
    assert dict(parse_qsl(encoded, keep_blank_values=True)) == tags


@pytest.mark.parametrize(
    ("option", "header"),
    [("content_type", "Content-Type"), ("storage_class", "X-OSS-Storage-Class"),
     ("acl", "x-oss-object-acl"), ("tagging", "x-oss-tagging"), ("metadata", "x-oss-meta-a")],
)
def test_an_option_and_its_header_together_is_an_error(option: str, header: str) -> None:
    value: Any = {"content_type": "text/plain", "storage_class": "IA", "acl": "private",
                  "tagging": {"a": "b"}, "metadata": {"a": "b"}}[option]
    with pytest.raises(ValueError, match=f"{option}= and a '{header.lower()}' header"):
        upload_headers("k", **{option: value}, headers={header: "text/plain"})
    # another metadata name is no conflict: both are sent
    if option == "metadata":
        h = upload_headers("k", metadata={"a": "b"}, headers={"x-oss-meta-c": "d"})
        assert (h["x-oss-meta-a"], h["x-oss-meta-c"]) == ("b", "d")


@pytest.mark.parametrize(
    "name",
    ["a.txt", "dir/page.HTML", "photo.jpeg", "x.tar.gz", "clip.mp4", "doc.docx", "deck.pptx",
     "app.apk", "book.xlsx", "noext", "dir.d/noext", "archive.gz", "weird.unknownext", ".hidden",
     "data:text/html,x"],
)
def test_guess_matches_oss2(name: str) -> None:
    expected = oss2.utils.content_type_by_name(name.rpartition("/")[2])
    if name == "data:text/html,x":
        expected = None  # oss2's mimetypes reads it as a data: URL; it is a key, not a URL
    assert guess_content_type(name) == expected


def test_guessing_order_and_default() -> None:
    assert upload_headers("a.txt")["content-type"] == "text/plain"
    assert upload_headers("noext")["content-type"] == "application/octet-stream"
    assert upload_headers(("photo.png", "k.txt"))["content-type"] == "image/png"
    assert upload_headers(("noext", "k.txt"))["content-type"] == "text/plain"
    assert upload_headers("a.txt", headers={"content-type": "x/y"})["content-type"] == "x/y"
    assert upload_headers("a.txt", content_type="x/y")["content-type"] == "x/y"
    assert "content-type" not in upload_headers(None)  # a presigned URL's uploader decides


def test_mimetypes_additions_apply() -> None:
    import mimetypes

    mimetypes.add_type("application/x-oss-test", ".osstest")
    try:
        assert upload_headers("k.osstest")["content-type"] == "application/x-oss-test"
    finally:
        mimetypes.types_map.pop(".osstest", None)


# --------------------------------------------------------------------------- on the wire


def sent(emu: OSSEmulator, operation: str) -> dict[str, str]:
    (record,) = records(emu, operation)
    return dict(record.headers)


async def test_put_object_sends_the_options_and_head_reads_them_back(
    api: Api, oss_emulator: OSSEmulator
) -> None:
    await api.put_object("report.html", b"<p>hi</p>", metadata={"Author": "ann", "n": "1"},
                         storage_class="ia", acl="private", tagging={"team": "a b"})
    h = sent(oss_emulator, "PutObject")
    assert h["content-type"] == "text/html"  # guessed from the key
    assert (h["x-oss-meta-author"], h["x-oss-meta-n"]) == ("ann", "1")
    assert (h["x-oss-storage-class"], h["x-oss-object-acl"]) == ("IA", "private")
    assert h["x-oss-tagging"] == "team=a%20b"
    head = await api.head_object("report.html")
    assert head.content_type == "text/html"
    assert dict(head.metadata) == {"author": "ann", "n": "1"}


async def test_put_object_file_name_first_then_key_as_oss2(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8")
    await api.put_object("uploads/a1b2", file=photo)  # put_object_from_file: the file name
    plain = tmp_path / "noext"
    plain.write_bytes(b"x")
    await api.put_object("notes.txt", file=plain)  # the file name tells nothing: the key
    await api.put_object("notes2.txt", file=photo)  # both tell: the file name wins (as oss2)
    await api.put_object("blob", b"x")  # neither: OSS's default
    types = {r.key: r.headers["content-type"] for r in records(oss_emulator, "PutObject")}
    assert types == {"uploads/a1b2": "image/jpeg", "notes.txt": "text/plain",
                     "notes2.txt": "image/jpeg", "blob": "application/octet-stream"}


async def test_bad_option_is_refused_before_any_request(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "f.bin"
    write_file(src, 3 * PART)
    with pytest.raises(ValueError, match="content_type= and a 'content-type' header"):
        await api.put_object("k", b"x", content_type="text/plain",
                             headers={"Content-Type": "text/html"})
    with pytest.raises(ValueError, match="storage_class"):
        await api.resumable_upload("k", src, part_size=PART, storage_class="Cold")
    with pytest.raises(ValueError, match="tagging"):
        await api.initiate_multipart_upload("k", tagging={"k": "v&w"})
    assert oss_emulator.requests == []
    assert oss_emulator.list_uploads() == []


@pytest.mark.parametrize("size", [3 * PART, PART // 2], ids=["multipart", "single-put"])
async def test_resumable_upload_sends_the_options_key_first(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, size: int
) -> None:
    src = tmp_path / "clip.mov"
    data = write_file(src, size)
    await api.resumable_upload("videos/clip.mp4", src, part_size=PART,
                               metadata={"src": "cam-1"}, storage_class="Archive",
                               acl="public-read", tagging={"kind": "raw"})
    await api.resumable_upload("videos/blob", src, part_size=PART)  # no key hint: file name
    first = "InitiateMultipartUpload" if size > PART else "PutObject"
    by_key = {r.key: dict(r.headers) for r in records(oss_emulator, first)}
    h = by_key["videos/clip.mp4"]
    assert h["content-type"] == "video/mp4"  # the key wins (oss2's resumable_upload)
    assert (h["x-oss-meta-src"], h["x-oss-storage-class"]) == ("cam-1", "Archive")
    assert (h["x-oss-object-acl"], h["x-oss-tagging"]) == ("public-read", "kind=raw")
    assert by_key["videos/blob"]["content-type"] == "video/quicktime"
    if size > PART:  # the ACL goes on Complete too (oss2 does; OSS documents it there)
        completes = {r.key: dict(r.headers) for r in records(oss_emulator,
                                                             "CompleteMultipartUpload")}
        assert completes["videos/clip.mp4"]["x-oss-object-acl"] == "public-read"
        assert "x-oss-object-acl" not in completes["videos/blob"]
    assert oss_emulator.get_object(BUCKET, "videos/clip.mp4") == data
    assert oss_emulator.head_object(BUCKET, "videos/clip.mp4").content_type == "video/mp4"  # type: ignore[union-attr]


async def test_initiate_multipart_upload_takes_the_options(
    api: Api, oss_emulator: OSSEmulator
) -> None:
    init = await api.initiate_multipart_upload("m/doc.pdf", metadata={"a": "b"},
                                               storage_class="ColdArchive", acl="default",
                                               tagging={"t": "1"})
    await api.abort_multipart_upload("m/doc.pdf", init.upload_id)
    h = sent(oss_emulator, "InitiateMultipartUpload")
    assert h["content-type"] == "application/pdf"
    assert (h["x-oss-meta-a"], h["x-oss-storage-class"]) == ("b", "ColdArchive")
    assert (h["x-oss-object-acl"], h["x-oss-tagging"]) == ("default", "t=1")


@pytest.mark.parametrize(
    "change",
    [{"storage_class": "IA"}, {"metadata": {"a": "2"}}, {"acl": "private"},
     {"tagging": {"t": "2"}}, {"content_type": "application/x-other"}],
)
async def test_a_changed_option_restarts_the_resumable_upload_cleanly(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, change: dict[str, Any]
) -> None:
    src = tmp_path / "big.bin"
    data = write_file(src, 6 * PART)
    ckpt = tmp_path / "big.ckpt"
    options: dict[str, Any] = {"storage_class": "Standard", "metadata": {"a": "1"},
                               "tagging": {"t": "1"}}

    def stop(done: int, total: int | None) -> None:
        if done >= 3 * PART:
            raise Stop

    with pytest.raises(Stop):
        await api.resumable_upload("big.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=stop, **options)
    (old,) = oss_emulator.list_uploads()
    mark = len(oss_emulator.requests)
    result = await api.resumable_upload("big.bin", src, part_size=PART, checkpoint_file=ckpt,
                                        **(options | change))
    assert result.upload_id != old
    (aborted,) = records(oss_emulator, "AbortMultipartUpload", since=mark)
    assert ("uploadId", old) in aborted.query  # the stale upload is not left behind
    assert len(records(oss_emulator, "UploadPart", since=mark)) == 6  # all parts again
    (init,) = records(oss_emulator, "InitiateMultipartUpload", since=mark)
    header, value = {
        "storage_class": ("x-oss-storage-class", "IA"), "metadata": ("x-oss-meta-a", "2"),
        "acl": ("x-oss-object-acl", "private"), "tagging": ("x-oss-tagging", "t=2"),
        "content_type": ("content-type", "application/x-other"),
    }[next(iter(change))]
    assert init.headers[header] == value
    assert oss_emulator.get_object(BUCKET, "big.bin") == data
    assert oss_emulator.list_uploads() == []


async def test_the_same_options_resume(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    data = write_file(src, 6 * PART)
    ckpt = tmp_path / "big.ckpt"
    options: dict[str, Any] = {"storage_class": "ia", "metadata": {"a": "1"},
                               "tagging": {"t": "1"}, "acl": "private"}

    def stop(done: int, total: int | None) -> None:
        if done >= 3 * PART:
            raise Stop

    with pytest.raises(Stop):
        await api.resumable_upload("big.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=stop, **options)
    (old,) = oss_emulator.list_uploads()
    mark = len(oss_emulator.requests)
    # the same options, spelled differently where OSS doesn't care
    options["storage_class"] = "IA"
    result = await api.resumable_upload("big.bin", src, part_size=PART, checkpoint_file=ckpt,
                                        **options)
    assert result.upload_id == old
    assert len(records(oss_emulator, "UploadPart", since=mark)) < 6
    assert oss_emulator.get_object(BUCKET, "big.bin") == data


@pytest.mark.oracle
def test_oss2_reads_what_the_options_set(
    oss_emulator: OSSEmulator, oss_bucket: str, tmp_path: Path
) -> None:
    import anyio

    async def upload() -> None:
        async with open_api(oss_emulator, oss_bucket, "async") as api:
            await api.put_object("docs/r.pdf", os.urandom(100), metadata={"Owner": "ann"})

    anyio.run(upload)
    bucket = oss2.Bucket(oss2.AuthV4(oss_emulator.access_key_id, oss_emulator.access_key_secret),
                         oss_emulator.endpoint, oss_bucket, region=oss_emulator.region)
    head = bucket.head_object("docs/r.pdf")
    assert head.content_type == "application/pdf"
    assert head.headers["x-oss-meta-owner"] == "ann"
