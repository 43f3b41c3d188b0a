"""The command line as a user meets it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from oss_callback.testing import CallbackReceiver

CLI = [sys.executable, "-m", "oss_callback"]
PART = 100 * 1024


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def emu_env(emu: Any) -> dict[str, str]:
    return {"OSS_ACCESS_KEY_ID": emu.access_key_id, "OSS_ACCESS_KEY_SECRET": emu.access_key_secret,
            "OSS_ENDPOINT": emu.endpoint, "OSS_REGION": emu.region,
            "OSS_CALLBACK_STATE_DIR": ""}


def test_demo_shows_the_callback_and_the_crc_match() -> None:
    proc = run("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "The callback server received and verified" in out
    assert "object = uploads/demo-video.bin" in out
    assert "size = 41943040" in out
    assert "uid = 42" in out
    assert '"Status":"OK"' in out
    assert "-> match" in out and "MISMATCH" not in out
    assert "CallbackError" in out and "was stored" in out
    assert "Traceback" not in proc.stderr


def test_help_lists_the_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("demo", "upload", "emulator"):
        assert command in proc.stdout


def test_upload_with_callback_and_json_output(
    oss_emulator: Any, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    oss_emulator.create_bucket("cli-bucket")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3 * PART + 5))
    proc = run("upload", str(src), "oss://cli-bucket/dir/f.bin", "--part-size", "100KiB",
               "--concurrency", "2", "--callback-url", callback_receiver.url + "/cb",
               "--callback-query", "from=cli", "--callback-var", "x:who=me",
               "--callback-body", "object=${object}&who=${x:who}", "--json",
               "--checkpoint-file", str(tmp_path / "c.json"), env=emu_env(oss_emulator))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["result"]["callback_body"] == '{"Status":"OK"}'
    assert doc["result"]["upload_id"]
    (received,) = callback_receiver.received
    assert received.body == b"object=dir%2Ff.bin&who=me"
    assert received.query == "from=cli"
    assert oss_emulator.get_object("cli-bucket", "dir/f.bin") == src.read_bytes()


def test_callback_failure_has_its_own_exit_code(
    oss_emulator: Any, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    oss_emulator.create_bucket("cli-bucket")
    callback_receiver.respond(status=500)
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    proc = run("upload", str(src), "oss://cli-bucket/k", "--callback-url", callback_receiver.url,
               env=emu_env(oss_emulator))
    assert proc.returncode == 3, proc.stderr
    assert "stored, but the callback failed" in proc.stderr
    assert oss_emulator.get_object("cli-bucket", "k") == b"hello"


def test_upload_resumes_after_being_killed(oss_emulator: Any, tmp_path: Path) -> None:
    oss_emulator.create_bucket("cli-bucket")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 * PART))
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="UploadPart", delay=0.05, times=None)
    args = ["upload", str(src), "oss://cli-bucket/big.bin", "--part-size", "100KiB",
            "--concurrency", "2", "--checkpoint-file", str(ckpt)]
    proc = subprocess.Popen([*CLI, *args], env={**os.environ, **emu_env(oss_emulator)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ckpt.exists() and len(json.loads(ckpt.read_text() or "{}")
                                 .get("payload", {}).get("parts", [])) >= 5:
            break
        assert proc.poll() is None, "the upload ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    oss_emulator.faults.clear()
    done = len(json.loads(ckpt.read_text())["payload"]["parts"])
    before = len(oss_emulator.requests)
    again = run(*args, "--quiet", env=emu_env(oss_emulator))
    assert again.returncode == 0, again.stderr
    sent = [r for r in oss_emulator.requests[before:]
            if r.operation == "UploadPart" and r.status == 200]
    # the killed run's parts still in flight may have completed after the checkpoint was
    # read; at most concurrency (2) of them can be re-sent beyond what was lost
    assert 40 - done - 2 <= len(sent) <= 40 - done
    assert oss_emulator.get_object("cli-bucket", "big.bin") == src.read_bytes()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["upload", "{file}", "oss://nobucket"], {}, "oss://BUCKET/KEY"),
        (["upload", "{file}", "oss://b-1/k", "--callback-url", "http://x/cb?a=1"],
         {}, "query string"),
        (["upload", "/no/such/file", "oss://b-1/k"], {}, "does not exist"),
        (["upload", "{file}", "oss://b-1/k"], {"OSS_ACCESS_KEY_ID": ""}, "OSS_ACCESS_KEY_ID"),
        (["upload", "{file}", "oss://b-1/k", "--endpoint", "http://127.0.0.1:9"], {},
         "ConnectError"),
        (["upload", "{file}", "oss://b-1/k"], {"OSS_ENDPOINT": ""}, "--endpoint"),
        (["upload", "{file}", "oss://b-1/k", "--part-size", "1KiB"], {}, "part_size"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], env: dict[str, str],
                                     message: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 200_000)
    full_env = {"OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": "secret",
                "OSS_ENDPOINT": "http://127.0.0.1:9", "OSS_REGION": "cn-hangzhou", **env}
    proc = run(*[a.replace("{file}", str(src)) for a in args], env=full_env)
    assert proc.returncode in (1, 2), proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("oss-callback: error:")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr.replace("OSS_ACCESS_KEY_SECRET", "")
