"""The public surface: exported names, docstrings, py.typed."""

from __future__ import annotations

import inspect
from pathlib import Path

import oss_callback
import oss_callback.server
import oss_callback.testing

EXPECTED = {
    "AsyncBucket", "AsyncClient", "Bucket", "Callback", "CallbackError", "CallbackUnknownError",
    "CheckpointError", "ObjectTooLargeError",
    "Client", "ClientError", "Credentials", "FileChangedError", "HeadObjectResult",
    "InconsistentError", "InitiateMultipartUploadResult", "ListPartsResult", "OSSError",
    "PartInfo", "PostPolicy", "PutObjectResult", "RequestError", "ResponseError", "RetryPolicy",
    "ServiceError", "UploadPartResult", "__version__",
    # credentials that rotate (issue #15)
    "AlibabaCloudCredentialsProvider", "CredentialsError", "CredentialsProvider",
    "EnvironmentCredentialsProvider", "StaticCredentialsProvider",
    # listing, copying, deleting, appending (issue #15)
    "AppendObjectResult", "CommonPrefix", "CopyObjectResult", "DeleteError",
    "DeleteObjectsResult", "ObjectInfo",
    # list_multipart_uploads' pairs also say when each upload began (issue #15)
    "MultipartUpload",
}


def test_all_is_exactly_the_public_names_sorted() -> None:
    assert set(oss_callback.__all__) == EXPECTED
    assert list(oss_callback.__all__) == sorted(oss_callback.__all__)
    for name in oss_callback.__all__:
        assert hasattr(oss_callback, name), name


def test_api_md_names_importable() -> None:
    from oss_callback import (  # noqa: F401 - the import is the test
        AsyncBucket,
        AsyncClient,
        Bucket,
        Callback,
        CallbackError,
        Client,
    )
    from oss_callback.fastapi import callback_dependency  # noqa: F401
    from oss_callback.server import (  # noqa: F401
        CallbackSignatureError,
        CallbackVerifier,
        VerifiedCallback,
    )
    from oss_callback.testing import OSSEmulator  # noqa: F401


def test_error_tree() -> None:
    from oss_callback import (
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

    assert issubclass(CallbackError, ServiceError)
    cls: type[Exception]
    for cls in (ServiceError, RequestError, ClientError):
        assert issubclass(cls, OSSError)
    for cls in (InconsistentError, CheckpointError, FileChangedError, ResponseError,
                oss_callback.CallbackUnknownError, oss_callback.ObjectTooLargeError):
        assert issubclass(cls, ClientError)
    # "stored, callback outcome unknown" must not be caught as a failed callback by mistake
    assert not issubclass(oss_callback.CallbackUnknownError, ServiceError)
    assert issubclass(oss_callback.server.CallbackSignatureError, ClientError)


def test_every_public_thing_is_documented() -> None:
    for module in (oss_callback, oss_callback.server, oss_callback.testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_py_typed_ships() -> None:
    assert (Path(oss_callback.__file__).parent / "py.typed").exists()
