"""The README's "Credentials" example, run against the emulator (as test_readme.py runs the
others): the endpoint becomes the emulator's and the sidecar's file a temporary one holding
an emulator-issued STS token in AssumeRole's shape."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_readme import CLOUD_ENDPOINT, block, emu_env, run_script

from oss_callback.testing import OSSEmulator


def test_credentials_example(oss_emulator: OSSEmulator, tmp_path: Path) -> None:
    oss_emulator.create_bucket("examplebucket")
    sts = oss_emulator.issue_sts_token(expires_in=900)
    assert sts.expiration is not None
    secrets_file = tmp_path / "oss-sts.json"
    secrets_file.write_text(json.dumps({
        "AccessKeyId": sts.access_key_id, "AccessKeySecret": sts.access_key_secret,
        "SecurityToken": sts.security_token,
        "Expiration": sts.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))
    data = os.urandom(3 * 1024 * 1024)
    (tmp_path / "db.tar").write_bytes(data)
    code = block("class SidecarCredentials").replace(CLOUD_ENDPOINT, oss_emulator.endpoint)
    code = code.replace("/run/secrets/oss-sts.json", str(secrets_file))
    env = {k: v for k, v in emu_env(oss_emulator).items()
           if not k.upper().endswith("_PROXY")
           and k not in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")}  # the provider's only
    assert run_script(code, tmp_path, env) == f"{len(data)}\n"
    assert oss_emulator.get_object("examplebucket", "backups/db.tar") == data
    assert {r.headers.get("x-oss-security-token") for r in oss_emulator.requests} == {
        sts.security_token}
