"""Resumable, concurrent multipart upload with a checkpoint file and the callback on Complete.

Policy (what happens when a previous run's checkpoint is found). Only what is provably the
same bytes is resumed:

* **resumed**: same bucket/key/file path, same file size, part size, headers (the typed
  options included) and callback, and OSS still knows the upload id, through whichever
  endpoint: a checkpoint belongs to the upload, not to the endpoint string (internal or
  public, accelerate, a CNAME or a proxy reach the same bucket). Every part OSS holds is
  re-read from the file and its CRC-64 compared with the one OSS holds (ListParts; else the
  one recorded when it was sent): matching parts are kept, every other part is uploaded
  (again). The file's identity (size, mtime, ctime, inode) is not trusted for this: a
  same-size rewrite whose mtime was restored (rsync, tar, backup tools) changes only the
  ctime, timestamps are coarse on some file systems, and a format-1 checkpoint has no ctime
  at all. So a file rewritten in place at the same size is not restarted: only its changed
  parts are sent again. Re-reading costs
  0.1-0.2 s per GiB from the page cache and about 0.6 s per GiB from disk on a 2-core VM
  (see :data:`VERIFY_THREADS`), under the time to upload a GiB even on loopback, so it is
  always done (there is no option to skip it).
* **restarted cleanly** (the stale upload is aborted, a new one begins): the file's size,
  the callback, the headers (typed options included) or the part size changed.
* **recovered**: OSS no longer knows the upload id and the object is provably this upload's
  (a Complete succeeded but its answer was lost; :meth:`_Uploader._already_completed` says
  what proves it). Nothing is sent; without a callback the result has ``recovered=True``;
  with one, :class:`CallbackUnknownError` (stored, callback outcome unknown). Otherwise
  (aborted by a lifecycle rule or a cleanup job, an object not provably ours, or an endpoint
  that does not reach the same bucket after all) a new upload begins, and its Complete fires
  the callback. The same check runs when a retried Complete answers ``NoSuchUpload`` (its
  first attempt went through, the answer was lost).
* **CheckpointError** (nothing is touched; the message says what to do): the checkpoint is
  corrupt, belongs to another bucket/key/file (the message says how to abort that upload,
  whose parts are billed until then), or was written by a newer version.

During a run, a file whose identity changes (size, mtime, ctime or inode) stops the upload
before Complete with :class:`FileChangedError`; the rerun re-verifies as above.

After Complete succeeds (200, or 203 -> :class:`CallbackError`: the object is stored) the
checkpoint is removed, so a rerun never tries to complete twice.  On any other failure the
upload and checkpoint are kept for the next run (``disable_checkpoint=False``) or the upload
is aborted (``disable_checkpoint=True``), so no parts are left orphaned.

The upload is one ``_Uploader`` (below) whose steps live in modules of their own, as mixins
over :class:`~oss_callback.client._resume.UploadJob`, the upload's state (bucket, key, file
identity, part size, headers, callback, checkpoint path), which every step reads as
``self.x`` as it would in one class: the checkpoint, read and checked against this upload,
written, and reconciled with the parts OSS holds (``_resume``); the part-upload workers
(``_part_upload``); the recovery of a Complete whose answer was lost (``_recovery``). Part
sizes and concurrency are in ``_parts``. This module has the entry point
(:class:`ResumableMixin`, a family of :class:`~oss_callback.AsyncBucket` operations; mixins:
see :mod:`oss_callback.client._base`) and the run, Complete included.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import anyio
import anyio.to_thread

from oss_callback.client._body import ProgressFn, check_readable_file
from oss_callback.client._checkpoint import (
    Checkpoint,
    FileIdentity,
    adopt_legacy_checkpoint,
    default_checkpoint_path,
    legacy_checkpoint_path,
)
from oss_callback.client._multipart import MultipartMixin
from oss_callback.client._part_upload import PartUploadMixin
from oss_callback.client._parts import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    choose_part_size,
    plan_parts,
)
from oss_callback.client._recovery import RecoveryMixin
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._errors import (
    CallbackError,
    CallbackUnknownError,
    InconsistentError,
    ServiceError,
)
from oss_callback.protocol._models import PutObjectResult, UploadPartResult
from oss_callback.protocol._options import upload_headers

__all__ = ["ResumableMixin"]

logger = logging.getLogger("oss_callback")


class ResumableMixin(MultipartMixin):
    """The resumable upload (see :class:`AsyncBucket`)."""

    async def resumable_upload(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        callback: Callback | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        checkpoint_file: str | os.PathLike[str] | None = None,
        disable_checkpoint: bool = False,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
        acl: str | None = None,
        tagging: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        progress: ProgressFn | None = None,
    ) -> PutObjectResult:
        """Upload a file in concurrent parts, resumable after a crash; callback on Complete.

        Files smaller than one part go through a single :meth:`put_object` (with the
        callback). Larger files: InitiateMultipartUpload, ``concurrency`` UploadPart requests
        in flight (each part read from disk in 2 MiB chunks in a worker thread, its CRC-64
        verified), a checkpoint written atomically after every part, then
        CompleteMultipartUpload carrying the callback, and the object's CRC-64 checked
        against the combination of all parts' (resumed ones included).

        Args:
            key: the object key.
            path: the local file.
            callback: attached to CompleteMultipartUpload (or the single PutObject).
            part_size: bytes per part (100 KiB..5 GiB); ``None`` picks 8 MiB, grown so the file
                never needs more than 10,000 parts.
            concurrency: parts in flight (default 4), at most the client's connections
                (``max_connections``, 8 by default; more parts wait for a free one). Memory
                stays around ``concurrency x 4 MiB`` (parts are streamed from the file in
                2 MiB reads, not buffered).
            checkpoint_file: where to record progress; ``None`` uses a per-user state folder
                (``$OSS_CALLBACK_STATE_DIR``, else ``$XDG_STATE_HOME/oss_callback/checkpoints``
                or ``~/.local/state/oss_callback/checkpoints``), one file per bucket, key and
                local file. A valid checkpoint is resumed after re-checking (CRC-64) the
                parts OSS holds against the file: changed parts are sent again, so the object
                is always the file as it is now. It belongs to the upload, not the endpoint:
                a run through another endpoint of the same bucket (internal or public,
                accelerate, a CNAME, a proxy) continues the same multipart upload (or starts
                a new one if OSS does not know it there).
            disable_checkpoint: no checkpoint is read or written; a failed upload is aborted.
            content_type: as for :meth:`put_object`, but guessed (as oss2's
                ``resumable_upload`` does) from the key first, then from the file name.
            metadata, storage_class, acl, tagging: as for :meth:`put_object` (sent on
                Initiate; ``acl`` on Complete too, as oss2 does). They are part of the
                checkpoint: a run with other values restarts the upload cleanly.
            headers: other headers for the object (sent on Initiate; also checkpointed).
            progress: ``progress(bytes_done, total)``, byte-accurate across parts; starts at
                the bytes already uploaded when resuming; rewinds if a part is retried; never
                exceeds ``total``. Called on the event loop thread; if it raises, the upload
                stops with that exception (resumable from the checkpoint).

        Returns:
            The stored object's :class:`PutObjectResult`, with ``upload_id`` set
            (``None`` when a single PutObject was used). ``recovered=True`` when an earlier
            run's CompleteMultipartUpload had gone through but its answer was lost (proven
            by the multipart ETag, size, CRC-64 and time): nothing is sent again, and
            ``callback_status``/``callback_body`` are ``None``.

        Raises:
            CallbackError: the object is stored but the callback failed; the checkpoint is
                removed (a rerun does not complete again).
            CallbackUnknownError: with a callback, the recovered case above: the object is
                stored (``e.result``), but the lost answer hid how the callback went.
            CheckpointError: the checkpoint is corrupt, foreign or from a newer version
                (nothing was touched; the message says what to do).
            FileChangedError: the file's size, mtime, ctime or inode changed during the
                upload (nothing is completed; a rerun re-checks the parts OSS holds and sends
                only changed and missing ones; a changed size restarts cleanly).
            InconsistentError: a CRC-64 mismatch (the wrong object is deleted).
            ServiceError, RequestError: as for :meth:`put_object`; the checkpoint is kept.

        Warning:
            With ``disable_checkpoint=False`` a failed upload keeps its parts on OSS (billed
            as storage) until it is resumed or aborted; configure a lifecycle rule that
            aborts incomplete multipart uploads after some days.
        """
        # Beyond the docstring above (and this module's resume policy): a resumed upload
        # re-reads every part OSS already holds and sends again each one whose bytes changed (a
        # same-size rewrite, even with the mtime restored), so the object is the file as it is
        # now, never a mix; a changed size restarts cleanly. When a Complete succeeded but its
        # answer was lost, the result has ``recovered=True`` (``callback_status``/
        # ``callback_body`` ``None``: unknown), and with a callback CallbackUnknownError is
        # raised instead, carrying that result.
        validate_key(key)
        file_path = check_readable_file(path)
        if concurrency is None:
            concurrency = DEFAULT_CONCURRENCY
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not (
            1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ValueError(
                f"concurrency must be an int in 1..{MAX_CONCURRENCY}, got {concurrency!r}"
            )
        if callback is not None and not isinstance(callback, Callback):
            raise TypeError(
                f"callback must be an oss_callback.Callback, got {type(callback).__name__}"
            )
        # Everything the object gets is in these headers, so in the checkpoint's headers digest:
        # a run with another option restarts cleanly. Content-Type: from the key first, then
        # the file name (oss2's resumable_upload guesses from the key; the small-file PutObject
        # below gets it ready-made, so both paths agree).
        init_headers = _split_headers(upload_headers(
            (key, file_path), content_type=content_type, metadata=metadata,
            storage_class=storage_class, acl=acl, tagging=tagging, headers=headers,
        ))
        identity = FileIdentity.of(file_path)
        size = identity.size
        chosen = choose_part_size(size, part_size)

        if size < chosen:
            # Smaller than one part: one PutObject carries the data and the callback.
            return await self.put_object(
                key, file=file_path, callback=callback, headers=init_headers, progress=progress
            )

        ckpt_path: str | None = None
        if not disable_checkpoint:
            if checkpoint_file is not None:
                ckpt_path = os.fspath(checkpoint_file)
            else:
                ckpt_path = default_checkpoint_path(self.name, key, file_path)
                legacy = legacy_checkpoint_path(self.client.endpoint, self.name, key, file_path)
                await anyio.to_thread.run_sync(adopt_legacy_checkpoint, ckpt_path, legacy)
        uploader = _Uploader(
            bucket=self, key=key, identity=identity, part_size=chosen, concurrency=concurrency,
            callback=callback, headers=init_headers, progress=progress, ckpt_path=ckpt_path,
        )
        return await uploader.run()


def _split_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    h = {k.lower(): str(v) for k, v in (headers or {}).items()}
    if "x-oss-callback" in h or "x-oss-callback-var" in h:
        raise ValueError("pass the callback as callback=..., not as x-oss-callback headers")
    return h


class _Uploader(RecoveryMixin, PartUploadMixin):
    """One resumable upload, run: its steps come from the mixins (see this module's
    docstring)."""

    async def run(self) -> PutObjectResult:
        plan = plan_parts(self.identity.size, self.part_size)
        ckpt = await self._load()
        if ckpt is not None:
            recorded = dict(ckpt.parts)
            if await self._reconcile(ckpt, plan):
                ckpt.file = self.identity  # the kept parts were verified against it
            else:
                done = await self._already_completed(ckpt, recorded, plan)
                if done is not None:
                    return done
                if self._was_via is not None:
                    logger.warning(
                        "upload %s (begun through %s) is unknown at %s: starting a new upload. "
                        "If that endpoint reaches another bucket of the same name, the old "
                        "upload's parts are still there: abort it with 'oss-callback "
                        "abort-uploads oss://%s/%s --endpoint %s'", ckpt.upload_id,
                        self._was_via, ckpt.endpoint, self.bucket.name, self.key,
                        self._was_via)
                else:
                    logger.warning("upload %s is unknown to OSS (aborted, or completed into "
                                   "an object not provably this upload's); starting a new "
                                   "upload", ckpt.upload_id)
                ckpt = None
        if ckpt is None:
            initiated_ms = int(time.time() * 1000)  # before sending: never after OSS's
            init = await self.bucket.initiate_multipart_upload(self.key, headers=self.headers)
            ckpt = Checkpoint(
                endpoint=self.bucket.client.endpoint, bucket=self.bucket.name, key=self.key,
                upload_id=init.upload_id, file=self.identity, part_size=self.part_size,
                headers_digest=self.headers_digest, callback_digest=self.callback_digest,
                initiated_ms=initiated_ms,
            )
        await self._save(ckpt, now=True)
        upload_id = ckpt.upload_id
        completed = False  # Complete answered: the upload id is gone, nothing to abort
        try:
            try:
                await self._upload_missing(ckpt, plan)
            finally:
                if self._dirty:  # every finished part on disk before Complete or a retry
                    with anyio.CancelScope(shield=True):
                        await self._save(ckpt, now=True)
            await anyio.to_thread.run_sync(self._check_file_unchanged)
            parts = [
                UploadPartResult(part_number=r.number, etag=r.etag, crc64=r.crc64, size=r.size)
                for _, r in sorted(ckpt.parts.items())
            ]
            # The ACL goes on Complete too (where OSS documents it), as oss2 does.
            acl = {k: v for k, v in self.headers.items() if k == "x-oss-object-acl"}
            try:
                result = await self.bucket.complete_multipart_upload(
                    self.key, upload_id, parts, callback=self.callback, headers=acl or None
                )
            except CallbackError:
                completed = True
                await self._forget()
                raise
            except InconsistentError:
                # The assembled object is not what we sent: never leave a wrong object.
                completed = True
                await self._forget()
                with anyio.move_on_after(30, shield=True):
                    await self.bucket.delete_object(self.key)
                raise
            except ServiceError as e:
                if e.code != "NoSuchUpload":
                    raise
                # A retried Complete whose first attempt went through (its answer lost) finds
                # the upload gone: the object is recovered if it is provably this upload's.
                try:
                    recovered = await self._already_completed(ckpt, dict(ckpt.parts), plan)
                except CallbackUnknownError:
                    completed = True  # stored: nothing left to abort
                    raise
                if recovered is None:
                    raise  # not provably ours: NoSuchUpload it is (the checkpoint is kept)
                completed = True
                return recovered
        except BaseException:
            if self.ckpt_path is None and not completed:
                await self._abort_quietly(upload_id)
            raise
        await self._forget()
        return result
