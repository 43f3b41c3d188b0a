"""``oss-callback callback-server``, the reference callback server, on real sockets.

The emulator sends the callbacks (signed with its key, which the server fetches from the
emulator or pins), the SDK uploads, SQLite is a real file; forged callbacks come from a
plain httpx client, signed (or not) with the emulator's signing function.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

import oss_callback.cli._callback_server as callback_server
from oss_callback import Bucket, Callback, CallbackError
from oss_callback.cli._main import main
from oss_callback.server import CallbackVerifier
from oss_callback.testing import OSSEmulator, ServeASGI
from oss_callback.testing._callbacks import sign_callback

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BODY = "bucket=${bucket}&object=${object}&size=${size}&etag=${etag}&x:uid=${x:uid}"
REGION_MARKERS = (r'# --- README "Receiving callbacks": begin ---\n(.*?)'
                  r'# --- README "Receiving callbacks": end ---\n')


def emulator_verifier(emu: OSSEmulator) -> CallbackVerifier:
    """What ``--trust-emulator URL`` makes: the emulator's key folder is the only key host."""
    verifier, _ = callback_server.make_verifier(
        argparse.Namespace(public_key=None, trust_emulator=emu.endpoint))
    assert verifier.allowed_key_hosts == (emu.endpoint + "/_emulator/",)
    return verifier


def bucket_of(emu: OSSEmulator, name: str) -> Bucket:
    return Bucket(name, emu.endpoint, emu.access_key_id, emu.access_key_secret,
                  region=emu.region)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT bucket, object, size, etag, confirmed, fields "
                            "FROM uploads ORDER BY object").fetchall()


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


@pytest.fixture
def photos(oss_emulator: OSSEmulator) -> Iterator[Bucket]:
    """The server's bucket ``photos`` in the emulator (also the uploader's)."""
    oss_emulator.create_bucket("photos")
    with bucket_of(oss_emulator, "photos") as bucket:
        yield bucket


@pytest.fixture
def server(oss_emulator: OSSEmulator, photos: Bucket, tmp_path: Path) -> Iterator[ServeASGI]:
    """The reference app, in process: trusts the emulator, confirms against ``photos``."""
    app = callback_server.create_app(emulator_verifier(oss_emulator), photos,
                                     str(tmp_path / "uploads.db"))
    with ServeASGI(app) as srv:
        yield srv


def signed_post(emu: OSSEmulator, url: str, body: bytes, *, key_url: str | None = None,
                signed_body: bytes | None = None) -> httpx.Response:
    """POST a callback signed with the emulator's key, as the emulator signs them."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "authorization": sign_callback(url, body if signed_body is None else signed_body),
        "x-oss-pub-key-url": base64.b64encode((key_url or emu.public_key_url).encode()).decode(),
    }
    with httpx.Client(trust_env=False, timeout=10) as http:
        return http.post(url, content=body, headers=headers)


# --------------------------------------------------------------------------- in process


def test_upload_is_verified_confirmed_printed_and_stored_once(
    server: ServeASGI, photos: Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = Callback(server.url + "/oss-callback", body=BODY, variables={"x:uid": "42"})
    first = photos.put_object("cats/tom.jpg", b"m" * 2048, callback=callback)
    assert first.callback_json() == {"Status": "OK", "bucket": "photos",
                                     "object": "cats/tom.jpg", "size": 2048,
                                     "etag": first.etag}
    assert printed(capsys) == [
        f"stored oss://photos/cats/tom.jpg size=2048 etag={first.etag} x:uid=42 (confirmed)"]
    (row,) = rows(tmp_path / "uploads.db")
    assert row[:5] == ("photos", "cats/tom.jpg", 2048, first.etag, 1)
    assert json.loads(row[5])["x:uid"] == "42"

    again = photos.put_object("cats/tom.jpg", b"new", callback=callback)  # the same key
    assert again.etag != first.etag
    assert [r[:5] for r in rows(tmp_path / "uploads.db")] == [
        ("photos", "cats/tom.jpg", 3, again.etag, 1)]
    assert printed(capsys) == [
        f"stored oss://photos/cats/tom.jpg size=3 etag={again.etag} x:uid=42 (confirmed)"]


def test_forged_callbacks_get_400_and_nothing_is_stored(
    server: ServeASGI, photos: Bucket, oss_emulator: OSSEmulator, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    etag = photos.put_object("cats/tom.jpg", b"m" * 2048).etag
    url = server.url + "/oss-callback"
    good = f"bucket=photos&object=cats%2Ftom.jpg&size=2048&etag={etag}".encode()
    # The control: signed like this, a true callback is accepted.
    assert signed_post(oss_emulator, url, good).status_code == 200
    assert printed(capsys)[0].startswith("stored oss://photos/cats/tom.jpg size=2048 ")
    with closing(sqlite3.connect(tmp_path / "uploads.db")) as db, db:
        db.execute("DELETE FROM uploads")

    with httpx.Client(trust_env=False, timeout=10) as http:
        unsigned = http.post(url, content=good)
    forged = {
        "missing_signature": unsigned,
        "bad_signature": signed_post(oss_emulator, url, good, signed_body=b"something else"),
        "tampered": signed_post(oss_emulator, url, good.replace(b"2048", b"2049"),
                                signed_body=good),
        # the emulator's host, outside its key folder (say, an object someone uploaded)
        "key_url_not_allowed": signed_post(oss_emulator, url, good,
                                           key_url=oss_emulator.endpoint + "/photos/key.pem"),
    }
    assert {name: r.status_code for name, r in forged.items()} == dict.fromkeys(forged, 400)
    assert [r.json() for r in forged.values()] == [
        {"Status": "Refused", "reason": reason} for reason in
        ("missing_signature", "bad_signature", "bad_signature", "key_url_not_allowed")]
    lines = printed(capsys)
    assert [line.split(":")[0] for line in lines] == [
        "refused missing_signature", "refused bad_signature", "refused bad_signature",
        "refused key_url_not_allowed"]
    assert rows(tmp_path / "uploads.db") == []


def test_authentic_callbacks_not_about_the_bucket_are_refused(
    server: ServeASGI, photos: Bucket, oss_emulator: OSSEmulator, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    etag = photos.put_object("cats/tom.jpg", b"m" * 2048).etag
    url = server.url + "/oss-callback"
    # "Another account" uploads to its own bucket, with a body naming ours and an object
    # we don't have: OSS (the emulator) signs that callback genuinely.
    oss_emulator.create_bucket("elsewhere")
    replay = Callback(url, body="bucket=photos&object=cats%2Fpaid.mp4&size=${size}"
                      "&etag=${etag}")
    with bucket_of(oss_emulator, "elsewhere") as theirs, pytest.raises(CallbackError) as e:
        theirs.put_object("anything", b"xyz", callback=replay)
    assert e.value.result.etag  # stored in *their* bucket; our server said no
    (outcome,) = oss_emulator.callbacks
    assert outcome.status == 400
    assert json.loads(outcome.response_body) == {  # type: ignore[arg-type]
        "Status": "Refused", "reason": "not_confirmed"}

    good = f"bucket=photos&object=cats%2Ftom.jpg&size=2048&etag={etag}"
    lies = [signed_post(oss_emulator, url, text.encode()) for text in (
        good.replace("tom.jpg", "paid.mp4"),           # no such object (signed here)
        good.replace("size=2048", "size=1048576"),     # another size
        good.replace(etag, "0" * 32),                  # another upload of that key
        good.replace("bucket=photos", "bucket=victims"),
        good.replace(f"&etag={etag}", ""),             # no etag: required when confirming
    )]
    assert [r.status_code for r in lies] == [400] * 5
    assert {r.json()["reason"] for r in lies} == {"not_confirmed"}
    lines = printed(capsys)
    assert len(lines) == 6
    assert all(line.startswith("refused not_confirmed: ") for line in lines)
    assert "oss://photos/cats/paid.mp4, which does not exist" in lines[0]
    assert rows(tmp_path / "uploads.db") == []


def test_without_a_bucket_only_the_signature_is_checked(
    oss_emulator: OSSEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    app = callback_server.create_app(emulator_verifier(oss_emulator))  # nor a database
    with ServeASGI(app) as srv:
        ok = signed_post(oss_emulator, srv.url + "/oss-callback",
                         b"bucket=b&object=not%2Fstored&x%3Ahi=a%0Ab")
        bad = signed_post(oss_emulator, srv.url + "/oss-callback", b"object=x",
                          signed_body=b"object=y")
    assert ok.status_code == 200
    assert ok.json() == {"Status": "OK", "bucket": "b", "object": "not/stored", "size": None,
                         "etag": None}
    assert bad.status_code == 400
    lines = printed(capsys)
    # a line break in the body can't start a line of its own
    assert lines[0] == "accepted oss://b/not/stored size=None etag=None x:hi='a\\nb' " \
        "(signature only)"
    assert lines[1].startswith("refused bad_signature: ")
    assert len(lines) == 2


# --------------------------------------------------------------------------- the README


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_shows_the_servers_code() -> None:
    (region,) = re.findall(REGION_MARKERS, Path(callback_server.__file__).read_text(), re.S)
    assert region.startswith("import json\n") and region.endswith("    return app\n")
    assert region in readme_blocks()  # the whole block, character for character
    text = README.read_text()
    section = text[text.index("## Receiving callbacks"):text.index("**Why confirm:**")]
    assert "oss-callback callback-server --trust-emulator http://127.0.0.1:9000" in section
    assert "--db uploads.db" in section
    assert "`verifier = CallbackVerifier()`" in section  # the production line
    assert "examples/fastapi_sqlite.py" not in text


def test_readme_snippet_runs_against_the_emulator(
    oss_emulator: OSSEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's server code and its wiring (emulator URL made this emulator's), a real
    upload with a callback to it, and the row in uploads.db."""
    (region,) = [b for b in readme_blocks() if "def create_app(" in b]
    (wiring,) = [b for b in readme_blocks() if "app = create_app(" in b]
    wiring = wiring.replace("http://127.0.0.1:9000", oss_emulator.endpoint)
    for name, value in {"OSS_ENDPOINT": oss_emulator.endpoint, "OSS_REGION": oss_emulator.region,
                        "OSS_ACCESS_KEY_ID": oss_emulator.access_key_id,
                        "OSS_ACCESS_KEY_SECRET": oss_emulator.access_key_secret}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # the snippet writes uploads.db in the working directory
    oss_emulator.create_bucket("examplebucket")
    namespace: dict[str, Any] = {"__name__": "readme_callback_server"}
    # dont_inherit: not this module's `from __future__ import annotations` (FastAPI needs the
    # real annotations of a route defined in a function)
    exec(compile(region + wiring, "README.md", "exec", dont_inherit=True), namespace)
    try:
        with ServeASGI(namespace["app"]) as srv, bucket_of(oss_emulator, "examplebucket") as b:
            result = b.put_object("photos/cat.jpg", b"hello\n", callback=Callback(
                srv.url + "/oss-callback", body=BODY, variables={"x:uid": "42"}))
    finally:
        namespace["bucket"].close()
    assert result.callback_json()["Status"] == "OK"  # type: ignore[index]
    assert printed(capsys) == [f"stored oss://examplebucket/photos/cat.jpg size=6 "
                               f"etag={result.etag} x:uid=42 (confirmed)"]
    assert result.etag == "B1946AC92492D2347C6235B4D2611184"  # the README's printed line
    assert [r[:5] for r in rows(tmp_path / "uploads.db")] == [
        ("examplebucket", "photos/cat.jpg", 6, result.etag, 1)]


# --------------------------------------------------------------------------- the command


class Running:
    """``oss-callback callback-server`` in a subprocess; its stdout read line by line."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oss_callback", "callback-server", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        first = self.line()
        match = re.fullmatch(r"OSS callback server listening on (http://\S+)", first)
        if match is None:
            self.proc.kill()
            self.proc.wait(10)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"the server did not start: {first}\n{err}")
        self.url = match.group(1)
        self.startup = [self.line() for _ in range(3)]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<EOF>")

    def line(self) -> str:
        return self.lines.get(timeout=20)

    def stop(self) -> int:
        """Ctrl-C; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        finally:
            self.proc.kill()
            self.proc.wait()
            self.reader.join(10)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OSS_") and not k.upper().endswith("_PROXY")}
    return {**env, **extra}


def test_the_command_confirms_prints_and_stores(
    oss_emulator: OSSEmulator, photos: Bucket, tmp_path: Path
) -> None:
    db = tmp_path / "uploads.db"
    env = clean_env(OSS_ACCESS_KEY_ID=oss_emulator.access_key_id,
                    OSS_ACCESS_KEY_SECRET=oss_emulator.access_key_secret,
                    OSS_REGION=oss_emulator.region)
    server = Running("--trust-emulator", oss_emulator.endpoint, "--bucket", "photos",
                     "--db", str(db), env=env)
    try:
        assert server.url.endswith("/oss-callback")
        assert server.startup == [
            f"signatures checked with the emulator's key, from {oss_emulator.endpoint}/_emulator/",
            f"callbacks are confirmed against oss://photos at {oss_emulator.endpoint} (a HEAD "
            "with the credentials in the environment)",
            f"storing callbacks in SQLite: {db}",
        ]
        callback = Callback(server.url, body=BODY, variables={"x:uid": "7"})
        result = photos.put_object("a b/c.txt", b"12345", callback=callback)
        assert result.callback_json() == {"Status": "OK", "bucket": "photos",
                                          "object": "a b/c.txt", "size": 5,
                                          "etag": result.etag}
        assert server.line() == (f"stored oss://photos/a b/c.txt size=5 etag={result.etag} "
                                 "x:uid=7 (confirmed)")
        with httpx.Client(trust_env=False) as http:
            refused = http.post(server.url, content=b"object=a")
        assert refused.status_code == 400
        assert refused.json() == {"Status": "Refused", "reason": "missing_signature"}
        assert server.line().startswith("refused missing_signature: ")
    finally:
        code = server.stop()
    assert code == 0
    assert [r[:5] for r in rows(db)] == [("photos", "a b/c.txt", 5, result.etag, 1)]


def test_the_command_with_a_pinned_key_and_no_credentials(
    oss_emulator: OSSEmulator, photos: Bucket, tmp_path: Path
) -> None:
    pem = tmp_path / "emulator.pem"
    pem.write_bytes(oss_emulator.public_key_pem)
    server = Running("--public-key", str(pem), "--path", "/hooks/oss", env=clean_env())
    try:
        assert server.url.endswith("/hooks/oss")
        assert server.startup[0] == f"signatures checked with the key pinned from {pem}"
        assert server.startup[1].startswith("callbacks are only signature-checked")
        assert "set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET" in server.startup[1]
        assert server.startup[2].startswith("not storing callbacks")
        result = photos.put_object("k", b"xy", callback=Callback(server.url, body=BODY))
        assert result.callback_json()["Status"] == "OK"  # type: ignore[index]
        assert server.line() == (f"accepted oss://photos/k size=2 etag={result.etag} x:uid= "
                                 "(signature only)")
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--public-key", "{tmp}/missing.pem"], "missing.pem: can't read it"),
        (["--public-key", "{tmp}/bad.pem"], "bad.pem: not an RSA public key in PEM"),
        (["--trust-emulator", "http://a b"], "--trust-emulator 'http://a b': give the "
                                             "emulator's URL"),
        (["--bucket", "photos"], "--bucket photos: to confirm callbacks against it, set "
                                 "OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET and pass "
                                 "--endpoint"),
        (["--path", "oss-callback"], "must start with /"),
        (["--db", "{tmp}/no/such/dir/u.db"], "--db"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT", "OSS_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    code = main(["callback-server", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("oss-callback: error: ")
    assert message in err


def test_public_key_and_trust_emulator_exclude_each_other(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["callback-server", "--public-key", "k.pem", "--trust-emulator", "http://h:1"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "callback-server" in capsys.readouterr().out


def test_missing_fastapi_exits_2_naming_the_extras() -> None:
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from oss_callback.cli._main import main\n"
            "sys.exit(main(['callback-server']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'oss-callback[fastapi,emulator]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_commands_run_as_shown(tmp_path: Path) -> None:
    """README "Receiving callbacks": its three commands (the emulator, this server, an
    upload with a callback), run as written (ports aside), print the line it shows."""
    text = README.read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S)
                if "oss-callback callback-server" in b]
    commands = [shlex.split(c, comments=True)
                for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    (shown,) = re.findall(r"The server prints\n\n```\n(.*?)\n```", text)
    env = clean_env()
    for name, _, value in (a.partition("=") for c in commands if c[0] == "export"
                           for a in c[1:]):
        env[name] = value
    by_name = {c[1]: c[2:] for c in commands if c[0] == "oss-callback"}
    assert [c[0] for c in commands] == ["export", "echo", "oss-callback", "oss-callback",
                                        "oss-callback"]
    (tmp_path / "cat.jpg").write_text("hello\n")  # echo hello > cat.jpg

    emulator = subprocess.Popen(
        [sys.executable, "-m", "oss_callback", "emulator", *by_name["emulator"], "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        assert emulator.stdout is not None
        first = emulator.stdout.readline()
        (endpoint,) = re.findall(r"listening on (http://\S+)", first)
        args = [endpoint if a == "http://127.0.0.1:9000" else a
                for a in by_name["callback-server"]]
        server = Running(*args, env=env, cwd=tmp_path)  # --port 0 for the README's 8080
        try:
            upload = [server.url if a == "http://127.0.0.1:8080/oss-callback" else
                      endpoint if a == "http://127.0.0.1:9000" else a
                      for a in by_name["upload"]]
            done = subprocess.run([sys.executable, "-m", "oss_callback", "upload", *upload],
                                  capture_output=True, text=True, env=env, cwd=tmp_path,
                                  timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            assert 'callback answered: {"Status":"OK","bucket":"examplebucket"' in done.stdout
            assert server.line() == shown
        finally:
            server.stop()
    finally:
        emulator.terminate()
        emulator.wait(10)
        if emulator.stdout is not None:
            emulator.stdout.close()
    with closing(sqlite3.connect(tmp_path / "uploads.db")) as conn:
        assert conn.execute("SELECT bucket, object, size FROM uploads").fetchall() == [
            ("examplebucket", "photos/cat.jpg", 6)]


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "oss_callback", "callback-server", "--port", port,
             "--db", str(tmp_path / "uploads.db")],
            capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""  # no "listening" line for a server that isn't
    assert f"cannot listen on 127.0.0.1:{port}; choose another --host or --port" in done.stderr
    assert "address already in use" in done.stderr.lower()
