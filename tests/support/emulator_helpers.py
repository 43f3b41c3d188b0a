"""Helpers shared by the emulator tests: hand-signed raw requests against an OSSEmulator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import httpx

from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import encode_key, render_query
from oss_callback.protocol._signing import sign_v1, sign_v4
from oss_callback.testing import OSSEmulator


def oss_request(
    emu: OSSEmulator,
    method: str,
    bucket: str | None,
    key: str | None = None,
    *,
    query: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    version: str = "v4",
    access_key_id: str | None = None,
    access_key_secret: str | None = None,
    security_token: str | None = None,
    now: datetime | None = None,
    region: str | None = None,
    virtual_host: bool = False,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """Sign (V1/V4, or not at all with version=None) and send one request to the emulator."""
    hdrs: dict[str, str] = dict(headers or {})
    creds = Credentials(
        access_key_id=access_key_id or emu.access_key_id,
        access_key_secret=access_key_secret or emu.access_key_secret,
        security_token=security_token,
    )
    now = now or datetime.now(timezone.utc)
    if version == "v1":
        sign_v1(method, bucket, key, list(query), hdrs, creds, now)
    elif version == "v4":
        sign_v4(method, bucket, key, list(query), hdrs, creds, now, region or emu.region)
    path = "/"
    if virtual_host:
        assert bucket is not None
        hdrs["Host"] = f"{bucket}.oss-emulator.localhost:{emu.port}"
        path += encode_key(key) if key else ""
    elif bucket:
        path += bucket + "/" + (encode_key(key) if key else "")
    url = emu.endpoint + path + render_query(list(query))
    if client is not None:
        return client.request(method, url, headers=hdrs, content=body)
    with httpx.Client(trust_env=False, timeout=30) as c:
        return c.request(method, url, headers=hdrs, content=body)


def error_code(response: httpx.Response) -> str:
    """The <Code> of an OSS error body (or of the x-oss-err header of a HEAD error)."""
    import base64
    import xml.etree.ElementTree as ET

    body = response.content
    if not body and "x-oss-err" in response.headers:
        body = base64.b64decode(response.headers["x-oss-err"])
    return ET.fromstring(body).findtext("Code") or ""


def error_field(response: httpx.Response, name: str) -> str | None:
    """One child of the <Error> document."""
    import xml.etree.ElementTree as ET

    return ET.fromstring(response.content).findtext(name)
