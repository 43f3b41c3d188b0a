"""oss_callback: async-first Alibaba Cloud OSS uploads with upload callbacks.

Upload with :class:`AsyncBucket` (or the synchronous :class:`Bucket`), attach a
:class:`Callback`, and catch :class:`CallbackError` when OSS stored the object but the
callback failed (HTTP 203).
"""

from ._callback import Callback
from ._client import AsyncBucket, AsyncClient
from ._credentials import Credentials
from ._errors import (
    CallbackError,
    CallbackUnknownError,
    CheckpointError,
    ClientError,
    FileChangedError,
    InconsistentError,
    ObjectTooLargeError,
    OSSError,
    RequestError,
    ResponseError,
    ServiceError,
)
from ._models import (
    HeadObjectResult,
    InitiateMultipartUploadResult,
    ListPartsResult,
    PartInfo,
    PutObjectResult,
    UploadPartResult,
)
from ._post_policy import PostPolicy
from ._retry import RetryPolicy
from ._sync import Bucket, Client
from ._version import __version__

__all__ = [
    "AsyncBucket",
    "AsyncClient",
    "Bucket",
    "Callback",
    "CallbackError",
    "CallbackUnknownError",
    "CheckpointError",
    "Client",
    "ClientError",
    "Credentials",
    "FileChangedError",
    "HeadObjectResult",
    "InconsistentError",
    "InitiateMultipartUploadResult",
    "ListPartsResult",
    "OSSError",
    "ObjectTooLargeError",
    "PartInfo",
    "PostPolicy",
    "PutObjectResult",
    "RequestError",
    "ResponseError",
    "RetryPolicy",
    "ServiceError",
    "UploadPartResult",
    "__version__",
]
