"""The README's examples, executed against the emulator so they can't rot.

The only edits made to each example: the cloud endpoint becomes the emulator's (and the
credentials come from the environment, as the examples expect), the callback URL becomes a
local receiver's, and the proxy and CA of the HTTP example become a local proxy's and the
emulator's. The receiving example (the reference callback server's code) is checked and run
in tests/cli/test_callback_server.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.helpers import form_fields

README = Path(__file__).resolve().parent.parent / "README.md"
CLOUD_ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def block(marker: str) -> str:
    (found,) = [b for b in python_blocks() if marker in b]
    return found


def emu_env(emu: Any) -> dict[str, str]:
    return {**os.environ, "OSS_ACCESS_KEY_ID": emu.access_key_id,
            "OSS_ACCESS_KEY_SECRET": emu.access_key_secret, "OSS_REGION": emu.region}


def run_script(code: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_readme_has_the_examples() -> None:
    # + Credentials (tests/client/test_credentials_readme.py), Receiving callbacks (two blocks,
    # tests/cli/test_callback_server.py)
    assert len(python_blocks()) == 10
    text = README.read_text()
    assert "oss-callback demo" in text and "bash .ci/run" in text


def test_asyncio_example(oss_emulator: Any, callback_receiver: Any, tmp_path: Path) -> None:
    oss_emulator.create_bucket("examplebucket")
    (tmp_path / "a.mp4").write_bytes(os.urandom(9 * 1024 * 1024))  # two 8 MiB-default parts
    code = block("callback_json()").replace(CLOUD_ENDPOINT, oss_emulator.endpoint).replace(
        "https://app.example.com/oss-callback", callback_receiver.url + "/oss-callback")
    out = run_script(code, tmp_path, emu_env(oss_emulator))
    assert "callback said {'Status': 'OK'}" in out
    assert oss_emulator.get_object("examplebucket", "videos/a.mp4") == (
        tmp_path / "a.mp4").read_bytes()
    (received,) = callback_receiver.received
    assert form_fields(received.body)["uid"] == "42"
    assert form_fields(received.body)["size"] == str(9 * 1024 * 1024)


def test_script_example(oss_emulator: Any, tmp_path: Path) -> None:
    oss_emulator.create_bucket("examplebucket")
    code = block("from oss_callback import Client\n\nwith").replace(
        CLOUD_ENDPOINT, oss_emulator.endpoint)
    out = run_script(code, tmp_path, emu_env(oss_emulator))
    assert out.startswith("b'hello' ")
    assert oss_emulator.get_object("examplebucket", "hello.txt") == b"hello"


def test_emulator_fixture_example(tmp_path: Path) -> None:
    (tmp_path / "test_uploads.py").write_text(block("def test_upload(oss_emulator)"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_uploads.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_browser_upload_example(oss_emulator: Any, callback_receiver: Any, tmp_path: Path) -> None:
    import json

    import httpx

    oss_emulator.create_bucket("examplebucket")
    code = block("sign_post_policy").replace(CLOUD_ENDPOINT, oss_emulator.endpoint).replace(
        "https://app.example.com/oss-callback", callback_receiver.url + "/oss-callback")
    code = code.replace("print(policy.url, list(policy.fields))",
                        "import json; print(json.dumps([policy.url, dict(policy.fields)]))")
    url, fields = json.loads(run_script(code, tmp_path, emu_env(oss_emulator)))
    with httpx.Client(trust_env=False, timeout=30) as http:  # the browser's form
        r = http.post(url, data=fields, files={"file": ("me.jpg", b"jpeg bytes")})
    assert r.status_code == 200, r.text
    assert r.json() == {"Status": "OK"}
    (received,) = callback_receiver.wait_for(1)
    assert form_fields(received.body) == {
        "object": "uploads/user-42/me.jpg", "size": "10", "user": "42"}


def test_device_upload_example(oss_emulator: Any, callback_receiver: Any,
                               tmp_path: Path) -> None:
    """The presigned PUT with a callback: the "device" part is a plain httpx PUT."""
    oss_emulator.create_bucket("examplebucket")
    code = block("sign_url(").replace(CLOUD_ENDPOINT, oss_emulator.endpoint).replace(
        "https://app.example.com/oss-callback", callback_receiver.url + "/oss-callback")
    env = {k: v for k, v in emu_env(oss_emulator).items() if not k.upper().endswith("_PROXY")}
    out = run_script(code, tmp_path, env)
    assert out == "200 {'Status': 'OK'}\n"
    assert oss_emulator.get_object("examplebucket", "uploads/user-42/clip.mp4") == b"...video..."
    assert oss_emulator.head_object("examplebucket",
                                    "uploads/user-42/clip.mp4").content_type == "video/mp4"
    (received,) = callback_receiver.wait_for(1)
    assert form_fields(received.body) == {
        "object": "uploads/user-42/clip.mp4", "size": "11", "user": "42"}


def test_respx_example(tmp_path: Path) -> None:
    (tmp_path / "test_with_respx.py").write_text(block("def test_put_object_is_signed"))
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_with_respx.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_respx_example_fails_when_a_request_is_not_mocked(tmp_path: Path) -> None:
    """The example's guarantee: an unmatched request fails the test, it never goes out."""
    code = block("def test_put_object_is_signed").replace(
        'respx.put("https://examplebucket.', 'respx.put("https://otherbucket.')
    (tmp_path / "test_with_respx.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_with_respx.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not mocked" in proc.stdout


def test_http_client_example(tmp_path: Path) -> None:
    """The HTTP example, for real: an HTTPS emulator whose CA is the "company CA", reached
    through a CONNECT proxy, with the event hooks logging each request and response."""
    from support.proxy_helpers import TestProxy

    from oss_callback.testing import OSSEmulator

    with OSSEmulator(tls=True, buckets=["examplebucket"]) as emu, TestProxy() as proxy:
        code = (block("event_hooks=").replace(CLOUD_ENDPOINT, emu.endpoint)
                .replace("http://proxy.internal:3128", proxy.url)
                .replace('"company-ca.pem"', repr(str(emu.ca_file))))
        env = {k: v for k, v in emu_env(emu).items()
               if not k.upper().endswith("_PROXY") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert emu.get_object("examplebucket", "hello.txt") == b"hello"
        assert proxy.request_lines == [f"CONNECT 127.0.0.1:{emu.port}"]
        (request_id,) = [r.request_id for r in emu.requests]
    log = proc.stderr.splitlines()
    assert "-> PUT /examplebucket/hello.txt" in log
    assert f"<- 200 {request_id}" in log
