"""Typed upload options -> request headers: ``content_type``, ``metadata``, ``storage_class``,
``acl``, ``tagging`` (and the Content-Type guessed from a name).

One helper, :func:`upload_headers`, serves every method that creates an object (PutObject,
InitiateMultipartUpload, the resumable upload, a presigned PUT URL), so they validate and
encode alike. Rules and where they come from:

* ``metadata`` -> ``x-oss-meta-<name>``. Names: ASCII letters, digits and ``-`` only, stored
  lower-case (OSS error pages 0011-00000004 and 0011-00000002: an underscore or any other
  character is refused). Values: printable ASCII. OSS stores header bytes as they come and
  HTTP has no portable encoding for other characters (httpx refuses them outright), so a
  non-ASCII value is refused here with a hint to percent-encode it (``urllib.parse.quote``)
  rather than sent mangled. All ``x-oss-meta-*`` names and values together: at most 8 KiB
  (0011-00000002).
* ``storage_class`` -> ``x-oss-storage-class``: ``Standard``, ``IA``, ``Archive``,
  ``ColdArchive``, ``DeepColdArchive`` (alibabacloud-oss-v2 ``StorageClassType``; oss2's
  ``BUCKET_STORAGE_CLASS_*``), matched case-insensitively and sent as spelled here.
* ``acl`` -> ``x-oss-object-acl``: ``private``, ``public-read``, ``public-read-write``,
  ``default`` (alibabacloud-oss-v2 ``ObjectACLType``).
* ``tagging`` -> ``x-oss-tagging: k1=v1&k2=v2``, keys and values percent-encoded (required in
  a header: PutObjectTagging usage notes). At most 10 tags; keys 1..128 characters, values
  0..256; letters, digits, spaces and ``+ - = . _ : /`` (OSS error page 0010-00000217).
* ``content_type`` -> ``Content-Type``. When neither it nor a ``Content-Type`` header is given,
  it is guessed from the names given, in order, as oss2's ``utils.set_content_type`` does
  (its Office/APK table, then the stdlib :mod:`mimetypes`, so ``mimetypes.add_type`` applies);
  ``application/octet-stream`` when no name tells.

A typed option and the same header in ``headers=`` is an error (``ValueError``), never a
silent choice between them.
"""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote

__all__ = [
    "ACLS",
    "DEFAULT_CONTENT_TYPE",
    "MAX_METADATA_BYTES",
    "MAX_TAGS",
    "STORAGE_CLASSES",
    "guess_content_type",
    "upload_headers",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive")
ACLS = ("private", "public-read", "public-read-write", "default")
MAX_METADATA_BYTES = 8 * 1024
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
META_PREFIX = "x-oss-meta-"

_META_NAME = re.compile(r"[A-Za-z0-9-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_MEDIA_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"{_MEDIA_NAME}/{_MEDIA_NAME}( *;[\x20-\x7e]*)?")
_TAG_PUNCTUATION = frozenset(" +-=._:/")
#: oss2's ``utils._EXTRA_TYPES_MAP``, which it consults before :mod:`mimetypes` (whose
#: answer for these depends on the system's mime.types); its ``.js`` entry is left out: the
#: stdlib answers ``text/javascript``, the type RFC 9239 made canonical.
_EXTRA_TYPES = {
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xltx": "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
    ".potx": "application/vnd.openxmlformats-officedocument.presentationml.template",
    ".ppsx": "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".sldx": "application/vnd.openxmlformats-officedocument.presentationml.slide",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".dotx": "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
    ".xlam": "application/vnd.ms-excel.addin.macroEnabled.12",
    ".xlsb": "application/vnd.ms-excel.sheet.binary.macroEnabled.12",
    ".apk": "application/vnd.android.package-archive",
}


def guess_content_type(name: str) -> str | None:
    """The Content-Type for an object or file name by its extension, ``None`` if unknown.

    As oss2's ``utils.content_type_by_name``: its table, then :func:`mimetypes.guess_type`
    (``a.tar.gz`` -> ``application/x-tar``, as there). Only the last path segment counts,
    and it is never read as a URL (a key ``data:text/html,x`` is just a name).
    """
    base = os.path.basename(name.replace("\\", "/"))
    ext = os.path.splitext(base)[1].lower()
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    guess_file = getattr(mimetypes, "guess_file_type", None)  # 3.13+: names, not URLs
    if guess_file is not None:
        return guess_file(base)[0]  # type: ignore[no-any-return]
    return mimetypes.guess_type("./" + base)[0]  # "./": no "scheme:" is ever parsed


def upload_headers(
    name: str | Sequence[str] | None,
    *,
    content_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    storage_class: str | None = None,
    acl: str | None = None,
    tagging: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The request headers for an upload: ``headers`` plus the typed options, validated.

    Args:
        name: what the Content-Type is guessed from when none is given: the object key, or
            several names tried in order (a file upload: ``(file_name, key)``); ``None``:
            no guess and no default (a presigned URL whose uploader sends its own).
        content_type: the object's ``Content-Type``.
        metadata: user metadata, ``{"name": "value"}`` -> ``x-oss-meta-name: value``.
        storage_class: ``Standard``, ``IA``, ``Archive``, ``ColdArchive`` or
            ``DeepColdArchive``.
        acl: ``private``, ``public-read``, ``public-read-write`` or ``default`` (the bucket's).
        tagging: object tags, ``{"key": "value"}`` (at most 10).
        headers: any other request headers, sent as given.

    Returns:
        A new dict, header names in lower case.

    Raises:
        ValueError: an invalid option (the message names it), or an option also given as a
            header in ``headers``.
        TypeError: an option of the wrong type.
    """
    out = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    typed: dict[str, str] = {}
    if content_type is not None:
        typed["content-type"] = _check_content_type(content_type)
    if storage_class is not None:
        typed["x-oss-storage-class"] = _choice(storage_class, STORAGE_CLASSES, "storage_class")
    if acl is not None:
        typed["x-oss-object-acl"] = _choice(acl, ACLS, "acl")
    if tagging is not None:
        typed["x-oss-tagging"] = encode_tagging(tagging)
    if metadata is not None:
        typed.update(_metadata_headers(metadata))
    for header, value in typed.items():
        if header in out:
            option = _option_of(header)
            raise ValueError(
                f"{option}= and a {header!r} header in headers= both set it; pass it once "
                f"(as {option}=)"
            )
        out[header] = value
    _check_metadata_size(out)
    if "content-type" not in out and name is not None:
        names = [name] if isinstance(name, str) else list(name)
        out["content-type"] = next(
            (t for t in map(guess_content_type, names) if t), DEFAULT_CONTENT_TYPE
        )
    return out


def encode_tagging(tagging: Mapping[str, str]) -> str:
    """``{"k": "v"}`` -> ``k=v&...`` (percent-encoded) for ``x-oss-tagging``; validated."""
    if not isinstance(tagging, Mapping):
        raise TypeError(f"tagging must be a dict of str -> str, got {type(tagging).__name__}")
    if len(tagging) > MAX_TAGS:
        raise ValueError(f"tagging has {len(tagging)} tags; OSS allows at most {MAX_TAGS}")
    pairs = []
    for key, value in tagging.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"tagging keys and values must be str, got {type(key).__name__} -> "
                f"{type(value).__name__} for {key!r}"
            )
        if not 1 <= len(key) <= MAX_TAG_KEY:
            raise ValueError(
                f"tagging key {key[:40]!r} is {len(key)} characters; OSS allows 1..{MAX_TAG_KEY}"
            )
        if len(value) > MAX_TAG_VALUE:
            raise ValueError(
                f"tagging value of {key!r} is {len(value)} characters; OSS allows at most "
                f"{MAX_TAG_VALUE}"
            )
        for what, text in (("key", key), ("value", value)):
            bad = sorted({c for c in text if not (c.isalnum() or c in _TAG_PUNCTUATION)})
            if bad:
                raise ValueError(
                    f"tagging {what} {text[:40]!r} has {''.join(bad)!r}: OSS allows letters, "
                    "digits, spaces and + - = . _ : / in tags"
                )
        pairs.append(f"{quote(key, safe='')}={quote(value, safe='')}")
    return "&".join(pairs)


def _check_content_type(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"content_type must be a str, got {type(value).__name__}")
    if not _CONTENT_TYPE.fullmatch(value) or value != value.strip():
        raise ValueError(
            f"content_type {value[:60]!r} is not a media type such as 'text/plain' or "
            "'text/html; charset=utf-8' (printable ASCII, type/subtype)"
        )
    return value


def _choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    for choice in allowed:
        if value.lower() == choice.lower():
            return choice
    raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value[:40]!r}")


def _metadata_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
    out: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata names and values must be str, got {type(name).__name__} -> "
                f"{type(value).__name__} for {name!r}"
            )
        if name.lower().startswith(META_PREFIX):
            raise ValueError(
                f"metadata name {name!r}: give it without the {META_PREFIX!r} prefix "
                f"(metadata={{{name[len(META_PREFIX):]!r}: ...}})"
            )
        if not _META_NAME.fullmatch(name):
            raise ValueError(
                f"metadata name {name[:40]!r} is invalid: OSS allows only ASCII letters, digits "
                "and '-' in metadata names (no '_', spaces or other characters)"
            )
        header = META_PREFIX + name.lower()
        if header in out:
            raise ValueError(
                f"metadata names {name!r} and another differing only in case both become "
                f"{header!r} (OSS stores names in lower case)"
            )
        if not _PRINTABLE_ASCII.fullmatch(value) or value != value.strip(" "):
            hint = (
                "non-ASCII text can't be sent in a header as is: store "
                "urllib.parse.quote(value) and unquote it when reading"
                if not value.isascii()
                else "control characters and leading/trailing spaces can't be sent in a "
                "header (HTTP strips or refuses them)"
            )
            raise ValueError(f"metadata value of {name!r} is invalid: {hint}")
        out[header] = value
    return out


def _check_metadata_size(headers: Mapping[str, str]) -> None:
    total = sum(len(k) + len(v) for k, v in headers.items() if k.startswith(META_PREFIX))
    if total > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata is {total} bytes (x-oss-meta-* names and values together); OSS allows "
            f"at most {MAX_METADATA_BYTES}"
        )


def _option_of(header: str) -> str:
    if header.startswith(META_PREFIX):
        return "metadata"
    return {
        "content-type": "content_type",
        "x-oss-storage-class": "storage_class",
        "x-oss-object-acl": "acl",
        "x-oss-tagging": "tagging",
    }[header]
