"""The emulator's service and bucket operations: ListBuckets, PutBucket, HeadBucket,
DeleteBucket (only when empty), and the answer to an object operation without a key."""

from __future__ import annotations

from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import OWNER_ID, XML_CONTENT_TYPE, iso, xml_doc
from oss_callback.testing._request import Request, Response
from oss_callback.testing._state import EmulatorState

__all__ = ["HANDLERS", "put_bucket"]


async def list_buckets(state: EmulatorState, req: Request) -> Response:
    """ListBuckets: ``GET /`` on the service."""
    region = state.region
    items = "".join(
        f"    <Bucket><CreationDate>{iso(created)}</CreationDate>"
        f"<ExtranetEndpoint>oss-{region}.aliyuncs.com</ExtranetEndpoint>"
        f"<Location>oss-{region}</Location><Name>{name}</Name>"
        f"<Region>{region}</Region><StorageClass>Standard</StorageClass></Bucket>\n"
        for name, created in sorted(state.store.buckets.items())
    )
    body = xml_doc(
        "ListAllMyBucketsResult",
        f"  <Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_ID}</DisplayName></Owner>\n"
        f"  <Buckets>\n{items}  </Buckets>\n",
    )
    return Response(status=200, headers=[XML_CONTENT_TYPE], body=body)


def put_bucket(state: EmulatorState, req: Request) -> Response:
    """PutBucket (the one operation on a bucket that need not exist yet)."""
    assert req.bucket is not None
    state.store.create_bucket(req.bucket)
    return Response(status=200, headers=[("Location", f"/{req.bucket}")])


async def head_bucket(state: EmulatorState, req: Request) -> Response:
    """HeadBucket: 200 (a missing bucket was answered 404 before)."""
    return Response(status=200)


async def delete_bucket(state: EmulatorState, req: Request) -> Response:
    """DeleteBucket: 409 ``BucketNotEmpty`` while it holds objects or uploads."""
    assert req.bucket is not None
    if state.store.objects.get(req.bucket) or any(
        u.bucket == req.bucket for u in state.store.uploads.values()
    ):
        raise OSSErrorResponse(
            409,
            "BucketNotEmpty",
            "The bucket you tried to delete is not empty.",
            [("BucketName", req.bucket)],
        )
    state.store.delete_bucket(req.bucket)
    return Response(status=204)


async def empty_object_name(state: EmulatorState, req: Request) -> Response:
    """An object operation (``?uploads``, ``?uploadId``...) on the bucket itself."""
    raise OSSErrorResponse(400, "InvalidObjectName", "The object name must not be empty.")


HANDLERS = {
    "ListBuckets": list_buckets,
    "HeadBucket": head_bucket,
    "DeleteBucket": delete_bucket,
    "EmptyObjectName": empty_object_name,
}
