"""Deleting many objects: :class:`BatchDeleteMixin` (``delete_objects``, a family of
:class:`~oss_callback.AsyncBucket` operations; mixins: see :mod:`oss_callback.client._base`).

It sends DeleteMultipleObjects (with the ``Content-MD5`` OSS requires) of at most 1,000 keys
a request; keys XML 1.0 can't carry are deleted one by one.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator

from oss_callback.client._objects import ObjectsMixin
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._models import DeleteError, DeleteObjectsResult
from oss_callback.protocol._xml import delete_body, parse_xml, xml_safe

__all__ = ["DELETE_BATCH", "BatchDeleteMixin"]

#: Keys per DeleteMultipleObjects request: OSS's maximum.
DELETE_BATCH = 1000


class BatchDeleteMixin(ObjectsMixin):
    """Deleting objects in batches (see :class:`AsyncBucket`); ``delete_object`` for the
    keys no batch can name."""

    async def delete_objects(
        self, keys: Iterable[str], *, quiet: bool = True
    ) -> DeleteObjectsResult:
        """Delete many objects: DeleteMultipleObjects, 1,000 keys a request.

        As on OSS, a key that doesn't exist counts as deleted, never as an error. Keys with
        control characters that XML can't carry are deleted one by one (DeleteObject).

        Args:
            keys: the keys (any iterable; not a single str).
            quiet: OSS's quiet mode: it answers with failures only (the result's
                ``deleted`` is then every key sent minus ``errors``); ``False``: it names
                every key it deleted.

        Returns:
            :class:`DeleteObjectsResult`: ``deleted`` keys and per-key ``errors``.

        Raises:
            ServiceError: a whole request refused (e.g. ``AccessDenied``); batches before
                it stay deleted.
        """
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of keys (a list), not a single key; "
                            "use delete_object(key) for one")
        wanted = list(keys)
        for key in wanted:
            validate_key(key)
        batchable = [k for k in wanted if xml_safe(k)]
        loose = [k for k in wanted if not xml_safe(k)]
        deleted: list[str] = []
        errors: list[DeleteError] = []
        what = "DeleteMultipleObjects"
        for batch in _batches(batchable, DELETE_BATCH):
            body = delete_body(batch, quiet)
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - OSS's
            _, content = await self._session.request(
                "POST", self.name, None, query=[("delete", ""), ("encoding-type", "url")],
                headers={"content-md5": md5, "content-type": "application/xml"}, body=body,
            )
            reported: list[str] = []
            failed: list[DeleteError] = []
            if content.strip():
                node = parse_xml(content, "DeleteResult", what)
                reported = [d.key_text("Key", what) for d in node.children("Deleted")]
                failed = [DeleteError(key=e.key_text("Key", what), code=e.text("Code") or "",
                                      message=e.text("Message") or "")
                          for e in node.children("Error")]
            errors.extend(failed)
            if quiet:
                refused = {e.key for e in failed}
                deleted.extend(k for k in batch if k not in refused)
            else:
                deleted.extend(reported)
        for key in loose:  # control characters: no XML body can name them; one by one
            await self.delete_object(key)
            deleted.append(key)
        return DeleteObjectsResult(deleted=deleted, errors=errors)


def _batches(keys: list[str], n: int) -> Iterator[list[str]]:
    for start in range(0, len(keys), n):
        yield keys[start:start + n]
