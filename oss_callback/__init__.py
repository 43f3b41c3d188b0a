"""oss_callback: async-first Alibaba Cloud OSS uploads with upload callbacks."""

from ._callback import Callback
from ._credentials import Credentials
from ._errors import (
    CallbackError,
    CheckpointError,
    ClientError,
    FileChangedError,
    InconsistentError,
    OSSError,
    RequestError,
    ResponseError,
    ServiceError,
)
from ._models import HeadObjectResult, PutObjectResult
from ._version import __version__

__all__ = [
    "Callback",
    "CallbackError",
    "CheckpointError",
    "ClientError",
    "Credentials",
    "FileChangedError",
    "HeadObjectResult",
    "InconsistentError",
    "OSSError",
    "PutObjectResult",
    "RequestError",
    "ResponseError",
    "ServiceError",
    "__version__",
]
