"""oss_callback: async-first Alibaba Cloud OSS uploads with upload callbacks.

Upload with :class:`AsyncBucket` (or the synchronous :class:`Bucket`), attach a
:class:`Callback`, and catch :class:`CallbackError` when OSS stored the object but the
callback failed (HTTP 203).
"""

from oss_callback._version import __version__
from oss_callback.client._client import AsyncBucket, AsyncClient
from oss_callback.client._post_policy import PostPolicy
from oss_callback.client._providers import (
    AlibabaCloudCredentialsProvider,
    EnvironmentCredentialsProvider,
    StaticCredentialsProvider,
)
from oss_callback.client._retry import RetryPolicy
from oss_callback.client._sync import Bucket, Client
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._credentials import Credentials, CredentialsError, CredentialsProvider
from oss_callback.protocol._errors import (
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
from oss_callback.protocol._models import (
    AppendObjectResult,
    CommonPrefix,
    CopyObjectResult,
    DeleteError,
    DeleteObjectsResult,
    HeadObjectResult,
    InitiateMultipartUploadResult,
    ListPartsResult,
    MultipartUpload,
    ObjectInfo,
    PartInfo,
    PutObjectResult,
    UploadPartResult,
)

__all__ = [
    "AlibabaCloudCredentialsProvider",
    "AppendObjectResult",
    "AsyncBucket",
    "AsyncClient",
    "Bucket",
    "Callback",
    "CallbackError",
    "CallbackUnknownError",
    "CheckpointError",
    "Client",
    "ClientError",
    "CommonPrefix",
    "CopyObjectResult",
    "Credentials",
    "CredentialsError",
    "CredentialsProvider",
    "DeleteError",
    "DeleteObjectsResult",
    "EnvironmentCredentialsProvider",
    "FileChangedError",
    "HeadObjectResult",
    "InconsistentError",
    "InitiateMultipartUploadResult",
    "ListPartsResult",
    "MultipartUpload",
    "OSSError",
    "ObjectInfo",
    "ObjectTooLargeError",
    "PartInfo",
    "PostPolicy",
    "PutObjectResult",
    "RequestError",
    "ResponseError",
    "RetryPolicy",
    "ServiceError",
    "StaticCredentialsProvider",
    "UploadPartResult",
    "__version__",
]
