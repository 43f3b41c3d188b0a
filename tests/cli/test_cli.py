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
    for command in ("demo", "upload", "abort-uploads", "emulator"):
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


# A checkpoint belongs to the upload, not the endpoint: the rerun may go through another
# endpoint of the same bucket (here the emulator as localhost instead of 127.0.0.1).
@pytest.mark.parametrize("rerun_via", ["same endpoint", "another endpoint"])
def test_upload_resumes_after_being_killed(oss_emulator: Any, tmp_path: Path,
                                           rerun_via: str) -> None:
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
    if rerun_via == "another endpoint":
        args += ["--endpoint", oss_emulator.endpoint.replace("127.0.0.1", "localhost")]
    again = run(*args, "--quiet", env=emu_env(oss_emulator))
    assert again.returncode == 0, again.stderr
    sent = [r for r in oss_emulator.requests[before:]
            if r.operation == "UploadPart" and r.status == 200]
    # the killed run's parts still in flight may have completed after the checkpoint was
    # read; at most concurrency (2) of them can be re-sent beyond what was lost
    assert 40 - done - 2 <= len(sent) <= 40 - done
    assert oss_emulator.get_object("cli-bucket", "big.bin") == src.read_bytes()
    inits = [r for r in oss_emulator.requests if r.operation == "InitiateMultipartUpload"]
    assert len(inits) == 1  # the rerun continued the killed run's upload
    assert oss_emulator.list_uploads() == []


def test_upload_options(oss_emulator: Any, tmp_path: Path) -> None:
    oss_emulator.create_bucket("cli-bucket")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    proc = run("upload", str(src), "oss://cli-bucket/page", "--content-type", "text/html",
               "--meta", "owner=ann", "--meta", "Run=7", "--storage-class", "ia",
               "--acl", "private", "--tag", "team=a b", "--tag", "env=dev", "--quiet",
               env=emu_env(oss_emulator))
    assert proc.returncode == 0, proc.stderr
    (put,) = [r for r in oss_emulator.requests if r.operation == "PutObject"]
    assert put.headers["content-type"] == "text/html"
    assert (put.headers["x-oss-meta-owner"], put.headers["x-oss-meta-run"]) == ("ann", "7")
    assert (put.headers["x-oss-storage-class"], put.headers["x-oss-object-acl"]) == (
        "IA", "private")
    assert put.headers["x-oss-tagging"] == "team=a%20b&env=dev"


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
        (["upload", "{file}", "oss://b-1/k", "--storage-class", "Cold"], {}, "storage_class"),
        (["upload", "{file}", "oss://b-1/k", "--meta", "my_name=1"], {}, "metadata name"),
        (["upload", "{file}", "oss://b-1/k", "--tag", "k"], {}, "--tag 'k' must be"),
        (["abort-uploads", "s3://b-1/x"], {}, "oss://BUCKET/PREFIX"),
        (["abort-uploads", "oss://b-1/x"], {"OSS_ENDPOINT": ""}, "--endpoint"),
        (["abort-uploads", "oss://b-1/x"], {"OSS_ACCESS_KEY_ID": ""}, "OSS_ACCESS_KEY_ID"),
        (["abort-uploads", "oss://b-1/x", "--endpoint", "http://127.0.0.1:9"], {},
         "ConnectError"),
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


# --------------------------------------------------------------------------- abort-uploads


def _start_uploads(emu: Any, keys: list[str]) -> dict[str, str]:
    """Initiate an upload (with one part) for each key: ``{key: upload_id}``."""
    from oss_callback import Client

    with Client(emu.endpoint, emu.access_key_id, emu.access_key_secret,
                region=emu.region) as client:
        bucket = client.get_bucket("cli-bucket")
        ids = {}
        for key in keys:
            ids[key] = bucket.initiate_multipart_upload(key).upload_id
            bucket.upload_part(key, ids[key], 1, b"p" * 1000)
        return ids


def _age(emu: Any, upload_id: str, days: float) -> None:
    """Make an upload look initiated ``days`` ago (the emulator's record of it)."""
    emu._require_running().store.uploads[upload_id].initiated -= days * 86400


def test_abort_uploads_dry_run_older_than_and_json(oss_emulator: Any) -> None:
    oss_emulator.create_bucket("cli-bucket")
    ids = _start_uploads(oss_emulator, ["logs/old.bin", "logs/new.bin", "keep/old.bin"])
    _age(oss_emulator, ids["logs/old.bin"], 3)
    _age(oss_emulator, ids["keep/old.bin"], 3)
    env = emu_env(oss_emulator)

    dry = run("abort-uploads", "oss://cli-bucket/logs/", "--older-than", "2d", "--dry-run",
              env=env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert lines[0].startswith(f"would abort oss://cli-bucket/logs/old.bin upload "
                               f"{ids['logs/old.bin']} (initiated ")
    assert "3d 0h ago" in lines[0]
    assert lines[1] == ("2 unfinished upload(s) under oss://cli-bucket/logs/; 1 would be "
                        "aborted (dry run: none was); 1 kept (initiated less than --older-than "
                        "ago, or at an unknown time)")
    assert sorted(oss_emulator.list_uploads()) == sorted(ids.values())  # nothing aborted

    proc = run("abort-uploads", "oss://cli-bucket/logs/", "--older-than", "1d12h", "--json",
               env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["ok"], doc["dry_run"], doc["prefix"], doc["older_than"]) == (
        True, False, "logs/", 1.5 * 86400)
    status = {u["key"]: (u["upload_id"], u["status"]) for u in doc["uploads"]}
    assert status == {"logs/old.bin": (ids["logs/old.bin"], "aborted"),
                      "logs/new.bin": (ids["logs/new.bin"], "kept")}
    assert all(u["initiated"] for u in doc["uploads"])
    assert sorted(oss_emulator.list_uploads()) == sorted([ids["logs/new.bin"],
                                                          ids["keep/old.bin"]])

    # no --older-than: every upload under the prefix, and nothing outside it
    proc = run("abort-uploads", "oss://cli-bucket/logs", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"aborted oss://cli-bucket/logs/new.bin upload {ids['logs/new.bin']}" in proc.stdout
    assert proc.stdout.strip().endswith("1 unfinished upload(s) under oss://cli-bucket/logs; "
                                        "1 aborted")
    assert oss_emulator.list_uploads() == [ids["keep/old.bin"]]

    # the whole bucket; then nothing is left to do
    assert run("abort-uploads", "oss://cli-bucket", env=env).returncode == 0
    assert oss_emulator.list_uploads() == []
    again = run("abort-uploads", "oss://cli-bucket", env=env)
    assert (again.returncode, again.stdout.strip()) == (
        0, "0 unfinished upload(s) under oss://cli-bucket/; 0 aborted")


def test_abort_uploads_goes_on_past_a_failure_and_exits_1(oss_emulator: Any) -> None:
    oss_emulator.create_bucket("cli-bucket")
    ids = _start_uploads(oss_emulator, ["a.bin", "b.bin", "c.bin"])
    oss_emulator.faults.add(operation="AbortMultipartUpload", key="b.bin", status=403,
                            code="AccessDenied", message="no", times=None)
    proc = run("abort-uploads", "oss://cli-bucket/", "--json", env=emu_env(oss_emulator))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    status = {u["key"]: u["status"] for u in doc["uploads"]}
    assert status == {"a.bin": "aborted", "b.bin": "failed", "c.bin": "aborted"}
    (failed,) = [u for u in doc["uploads"] if u["status"] == "failed"]
    assert "AccessDenied" in failed["error"]
    assert oss_emulator.list_uploads() == [ids["b.bin"]]
    text = run("abort-uploads", "oss://cli-bucket/", env=emu_env(oss_emulator))
    assert text.returncode == 1
    assert f"FAILED to abort oss://cli-bucket/b.bin upload {ids['b.bin']}" in text.stderr
    assert text.stdout.strip().endswith("; 0 aborted; 1 failed")


def test_abort_uploads_bad_duration_is_a_usage_error() -> None:
    proc = run("abort-uploads", "oss://b-1/", "--older-than", "7 years")
    assert proc.returncode == 2
    assert "invalid duration '7 years'" in proc.stderr


# --------------------------------------------------------------------------- --version, --json


def test_version_prints_the_package_version() -> None:
    from oss_callback import __version__

    proc = run("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"oss-callback {__version__}\n", "")


_BAD_JSON_RUNS = [
    (["upload", "/no/such/file", "oss://b-1/k"], 2, "does not exist"),
    (["upload", "{file}", "oss://nobucket"], 2, "oss://BUCKET/KEY"),
    (["upload", "{file}", "oss://b-1/k", "--part-size", "1x"], 2, "invalid size '1x'"),
    (["upload"], 2, "required: PATH"),
    (["upload", "{file}", "oss://b-1/k", "--endpoint", "http://127.0.0.1:9"], 1, "ConnectError"),
    (["abort-uploads", "s3://b-1/x"], 2, "oss://BUCKET/PREFIX"),
    (["abort-uploads", "oss://b-1/", "--older-than", "7 years"], 2, "invalid duration"),
    (["abort-uploads", "oss://b-1/x", "--endpoint", "http://127.0.0.1:9"], 1, "ConnectError"),
    (["callback-test"], 2, "give the callback URL"),
    (["callback-test", "http://127.0.0.1:9/cb", "--size", "lots"], 2, "invalid size"),
    (["callback-test", "--print-key"], 2, "--print-key needs --key-file"),
]


@pytest.mark.parametrize(("args", "code", "message"), _BAD_JSON_RUNS)
def test_json_errors_are_one_document_on_stdout(tmp_path: Path, args: list[str], code: int,
                                               message: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    env = {"OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": "secret",
           "OSS_ENDPOINT": "http://127.0.0.1:9", "OSS_REGION": "cn-hangzhou"}
    proc = run(*[a.replace("{file}", str(src)) for a in args], "--json", env=env)
    assert proc.returncode == code, proc
    assert proc.stderr == ""
    doc = json.loads(proc.stdout)  # one JSON document, nothing else
    assert (doc["ok"], doc["exit_code"], doc["command"]) == (False, code, args[0])
    assert message in doc["error"]
    assert doc["type"] == ("UsageError" if code == 2 else "RequestError")
    assert "secret" not in proc.stdout


def test_json_error_from_oss_has_its_code_and_request_id(oss_emulator: Any,
                                                         tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    proc = run("upload", str(src), "oss://no-such-bucket/k", "--json",
               env=emu_env(oss_emulator))
    assert proc.returncode == 1, proc
    doc = json.loads(proc.stdout)
    assert (doc["ok"], doc["exit_code"], doc["type"]) == (False, 1, "ServiceError")
    assert (doc["status"], doc["code"]) == (404, "NoSuchBucket")
    assert doc["request_id"] and "NoSuchBucket" in doc["error"]


def test_json_documents_carry_the_exit_code(
    oss_emulator: Any, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    oss_emulator.create_bucket("cli-bucket")
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    env = emu_env(oss_emulator)
    ok = run("upload", str(src), "oss://cli-bucket/k", "--json", env=env)
    assert (ok.returncode, json.loads(ok.stdout)["exit_code"]) == (0, 0), ok.stderr

    callback_receiver.respond(status=500)
    failed = run("upload", str(src), "oss://cli-bucket/k2", "--callback-url",
                 callback_receiver.url, "--json", env=env)
    doc = json.loads(failed.stdout)
    assert failed.returncode == doc["exit_code"] == 3, failed.stderr
    assert (doc["ok"], doc["stored"]) == (False, True) and "500" in doc["error"]

    tested = run("callback-test", callback_receiver.url + "/cb", "--json")
    doc = json.loads(tested.stdout)
    assert tested.returncode == doc["exit_code"] == 3, tested.stderr
    assert (doc["ok"], doc["oss_status"]) == (False, 203) and doc["error"]

    _start_uploads(oss_emulator, ["a.bin"])
    oss_emulator.faults.add(operation="AbortMultipartUpload", status=403, code="AccessDenied",
                            message="no", times=None)
    aborted = run("abort-uploads", "oss://cli-bucket/", "--json", env=env)
    doc = json.loads(aborted.stdout)
    assert aborted.returncode == doc["exit_code"] == 1, aborted.stderr
    assert doc["ok"] is False and doc["error"] == "1 of 1 abort(s) failed"
