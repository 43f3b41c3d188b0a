"""``oss-callback callback-test``: real callback servers over real sockets, judged as OSS
judges them (the emulator's sender), with OSS's answer to the uploader and the exit code."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from support.tls_helpers import SniServer

from oss_callback import Bucket
from oss_callback.cli._main import main
from oss_callback.server import CallbackSignatureError, CallbackVerifier
from oss_callback.testing import CallbackReceiver, OSSEmulator, ServeASGI

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _server(handle: Handler) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 answering ``handle(path, headers, body)``."""

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = handle(self.path, {k.lower(): v for k, v in self.headers.items()},
                                    body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["callback-test", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = _run(capsys, *argv, "--json")
    report: dict[str, Any] = json.loads(out)  # one JSON document, nothing else
    return code, report


def test_ok_server_verifies_the_signature_with_the_served_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_port = _free_port()
    # The prefix `oss-callback callback-server --trust-emulator URL` trusts.
    verifier = CallbackVerifier(allowed_key_hosts=(f"http://127.0.0.1:{key_port}/_emulator/",))
    seen: list[dict[str, str]] = []

    def handle(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        raw_path, _, query = path.partition("?")
        try:  # fetches the public key from the command's key server, as from OSS's
            verified = verifier.verify_sync("POST", raw_path, query, headers, body)
        except CallbackSignatureError as e:
            return 400, json.dumps({"error": str(e)}).encode()
        seen.append({str(k): str(v) for k, v in verified.fields.items()})
        return 200, b'{"Status":"OK","verified":true}'

    with _server(handle) as url:
        code, out, err = _run(capsys, url + "/oss-callback", "--key-port", str(key_port),
                              "--bucket", "my-bucket", "--object", "dir/photo 1.jpg",
                              "--size", "2KiB", "--query", "uid=42")
    assert code == 0, out + err
    assert seen == [{
        "bucket": "my-bucket", "object": "dir/photo 1.jpg", "etag": seen[0]["etag"],
        "size": "2048", "crc64": seen[0]["crc64"],
    }]
    assert len(seen[0]["etag"]) == 32 and seen[0]["crc64"].isdigit()
    assert 'OSS would answer the upload: 200, with your server\'s body: ' \
        '{"Status":"OK","verified":true}' in out
    assert f"http://127.0.0.1:{key_port}/" in out and "fetched 1 time(s)" in out


def test_json_report_with_a_pinned_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = tmp_path / "callback.key"
    code, pem, _ = _run(capsys, "--key-file", str(key_file), "--print-key")
    assert code == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert _run(capsys, "--key-file", str(key_file), "--print-key")[1] == pem  # kept

    with CallbackReceiver(body=b'{"id":7}') as receiver:
        code, report = _run_json(
            capsys, receiver.url + "/cb", "--key-file", str(key_file), "--body-type", "json",
            "--body", '{"o":${object},"size":${size},"m":${mimeType},"u":${x:uid}}',
            "--var", "x:uid=u-1", "--object", "a.png", "--size", "5",
        )
        (got,) = receiver.received
    assert code == 0
    assert report["ok"] is True and report["oss_status"] == 200 and report["reason"] is None
    assert report["uploader"] == {"status": 200, "content_type": "application/json",
                                  "body": '{"id":7}'}
    assert report["hint"] is None
    assert report["public_key"]["pem"] == pem and report["public_key"]["fetches"] == 0
    assert report["request"]["callback_sni"] is False  # http: no SNI
    (attempt,) = report["attempts"]
    assert attempt["status"] == 200 and attempt["error"] is None
    # What the server got is what the report says was sent, and it verifies with the key.
    assert json.loads(got.body) == {"o": "a.png", "size": 5, "m": "image/png", "u": "u-1"}
    assert got.body.decode() == report["request"]["body"]
    assert got.headers["content-type"] == "application/json"
    verified = CallbackVerifier(public_key=pem).verify_sync(
        "POST", got.path, got.query, got.headers, got.body)
    assert verified.fields["u"] == "u-1"


@pytest.mark.parametrize(
    ("respond", "reason", "message", "hint"),
    [
        ({"status": 500, "body": b'{"e":1}'}, "status", "Error status : 500.", "see its log"),
        ({"status": 201}, "status", "Error status : 201.", "exactly 200"),
        ({"status": 403}, "status", "Error status : 403.", "trust this test's key"),
        ({"body": b"OK"}, "not_json", "Response body is not valid json format.",
         "answer a JSON body"),
        ({"body": b'"' + b"a" * (1024 * 1024 + 10) + b'"'}, "too_long",
         "Error Status : 200.User server return too long content-length value", "under 1 MB"),
    ],
)
def test_failing_server_is_a_203_with_oss_reason_and_a_fix(
    capsys: pytest.CaptureFixture[str], respond: dict[str, Any], reason: str, message: str,
    hint: str,
) -> None:
    with CallbackReceiver() as receiver:
        receiver.respond(**respond)
        code, out, _ = _run(capsys, receiver.url + "/cb")
        assert len(receiver.received) == 1
        code_json, report = _run_json(capsys, receiver.url + "/cb")
    assert code == code_json == 3
    assert f"OSS would answer the upload: 203 CallbackFailed: {message}" in out
    assert "the SDK raises CallbackError" in out
    assert "fix: " in out and hint in out
    assert report["ok"] is False and report["oss_status"] == 203
    assert report["reason"] == reason and hint in report["hint"]
    assert report["uploader"] == {"status": 203, "code": "CallbackFailed", "message": message}


def test_slow_server_times_out_after_oss_five_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with CallbackReceiver(delay=8) as receiver:
        code, report = _run_json(capsys, receiver.url + "/slow")
    assert code == 3 and report["reason"] == "timeout"
    (attempt,) = report["attempts"]
    assert attempt["status"] is None and 4900 <= attempt["elapsed_ms"] < 7000
    assert "timeout: 5000 MS" in report["uploader"]["message"]
    assert "within 5 s" in report["hint"]


def test_https_server_requiring_sni_without_it_is_a_tls_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with SniServer() as server:
        code, report = _run_json(capsys, server.url + "/cb", "--no-sni")
        ok_code, ok_report = _run_json(capsys, server.url + "/cb")  # default: SNI on
    assert code == 3 and report["reason"] == "tls"
    assert report["request"]["callback_sni"] is False
    assert report["uploader"]["message"].startswith(
        "Error status : -1. OSS can not connect to your callbackUrl, please check it.")
    assert "sni=True" in report["uploader"]["message"] and "sni=True" in report["hint"]
    assert "no SNI" in report["attempts"][0]["detail"]
    assert ok_code == 0 and ok_report["request"]["callback_sni"] is True
    assert ok_report["attempts"][0]["sni"] is True
    assert server.server_names == [None, "localhost"]


def test_https_server_refusing_every_handshake_is_a_tls_failure_not_an_sni_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with SniServer(refuse_all=True) as server:
        code, report = _run_json(capsys, server.url + "/cb")
    assert code == 3 and report["reason"] == "tls"
    assert server.server_names == ["localhost"]  # SNI was sent
    assert "TLS handshake with localhost failed" in report["attempts"][0]["detail"]
    assert "fix the server's TLS" in report["hint"]
    assert "sni=True" not in report["uploader"]["message"]


@pytest.mark.parametrize("sni", [[], ["--no-sni"]])
def test_https_url_on_a_plain_http_server_is_not_blamed_on_sni(
    capsys: pytest.CaptureFixture[str], sni: list[str]
) -> None:
    with CallbackReceiver() as receiver:
        url = receiver.url.replace("http://127.0.0.1", "https://localhost") + "/cb"
        code, out, _ = _run(capsys, url, *sni)
    assert code == 3
    assert "doesn't speak TLS (WRONG_VERSION_NUMBER)" in out
    assert "fix: the server at that port answers plain HTTP, not TLS" in out
    assert "sni=True" not in out  # not the cause


def test_unreachable_url_then_a_working_one(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/cb"
    code, report = _run_json(capsys, dead)
    assert code == 3 and report["reason"] == "connect"
    assert "listening" in report["hint"]
    with CallbackReceiver() as receiver:  # OSS tries the URLs in order
        code, report = _run_json(capsys, f"{dead};{receiver.url}/cb")
    assert code == 0
    assert [a["reason"] for a in report["attempts"]] == ["connect", None]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://127.0.0.1:9/cb", "--var", "x:uid"], "must be written K=V"),
        (["http://127.0.0.1:9/cb", "--var", "uid=1"], "x:"),
        (["ftp://127.0.0.1/cb"], "http:// or https://"),
        (["not-a-url"], "http:// or https://"),
        (["http://127.0.0.1:9/cb?a=1"], "query"),
        (["http://127.0.0.1:9/cb", "--body", "a=${bad var}"], "invalid variable"),
        ([], "give the callback URL"),
        (["--print-key"], "--print-key needs --key-file"),
        (["http://127.0.0.1:9/cb", "--key-port", "70000"], "--key-port"),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == "" and message in err


def test_bad_body_type_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["callback-test", "http://127.0.0.1:9/cb", "--body-type", "xml"])
    assert info.value.code == 2
    assert "--body-type" in capsys.readouterr().err


def test_key_port_in_use_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = _run(capsys, "http://127.0.0.1:9/cb", "--key-port",
                            str(busy.getsockname()[1]))
    assert code == 2 and "can't serve the public key" in err


def test_without_cryptography_exits_2_naming_the_extra() -> None:
    script = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from oss_callback.cli._main import main\n"
        "sys.exit(main(['callback-test', 'http://127.0.0.1:9/cb']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONWARNINGS": ""}, check=False)
    assert done.returncode == 2, done.stderr
    assert "cryptography" in done.stderr and "oss-callback[emulator]" in done.stderr
    assert done.stdout == ""


def test_the_made_up_upload_is_stable_and_form_encoded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with CallbackReceiver() as receiver:
        for _ in range(2):
            assert _run(capsys, receiver.url + "/cb", "--object", "a b/c.txt",
                        "--etag", "ABC", "--crc64", "7")[0] == 0
        first, second = receiver.received
    assert first.body == second.body
    assert dict(parse_qsl(first.body.decode())) == {
        "bucket": "examplebucket", "object": "a b/c.txt", "etag": "ABC", "size": "1024",
        "crc64": "7",
    }
    assert b"a%20b%2Fc.txt" in first.body  # substituted values URL-encoded, as OSS does


def test_readme_example(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.S)
                  if b.startswith("oss-callback callback-test ")]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["oss-callback", "callback-test"]
    with CallbackReceiver() as receiver:
        argv[2] = receiver.url + "/oss-callback"
        argv[argv.index("--key-port") + 1] = str(_free_port())
        code = main(argv[1:])
        (got,) = receiver.received
    assert code == 0, capsys.readouterr().err
    fields = dict(parse_qsl(got.body.decode()))
    assert (fields["object"], fields["size"], fields["uid"]) == ("photos/cat.jpg", "6", "42")


def test_against_the_reference_callback_server(
    capsys: pytest.CaptureFixture[str], oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    """The two tools together: callback-test's POST passes callback-server's checks (it
    trusts the test key as it trusts the emulator's), and a server that confirms against
    its bucket refuses the made-up object, which callback-test reports as OSS would."""
    import argparse

    import oss_callback.cli._callback_server as callback_server

    key_port = _free_port()
    verifier, _ = callback_server.make_verifier(argparse.Namespace(
        public_key=None, trust_emulator=f"http://127.0.0.1:{key_port}"))
    db = tmp_path / "uploads.db"
    with ServeASGI(callback_server.create_app(verifier, None, str(db))) as srv:
        code, out, err = _run(capsys, srv.url + "/oss-callback", "--key-port", str(key_port),
                              "--bucket", "photos", "--object", "cat.jpg", "--size", "6",
                              "--var", "x:uid=42")
    assert code == 0, out + err
    assert "stored oss://photos/cat.jpg size=6" in out and "(signature only)" in out
    assert '"Status":"OK"' in out.replace(" ", "")
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT bucket, object, size FROM uploads").fetchall() == [
            ("photos", "cat.jpg", 6)]

    oss_emulator.create_bucket("photos")
    with Bucket("photos", oss_emulator.endpoint, oss_emulator.access_key_id,
                oss_emulator.access_key_secret, region=oss_emulator.region) as photos, \
            ServeASGI(callback_server.create_app(verifier, photos, None)) as srv:
        code, out, err = _run(capsys, srv.url + "/oss-callback", "--key-port", str(key_port),
                              "--bucket", "photos", "--object", "missing.jpg", "--size", "6")
    assert code == 3, out + err
    # the in-process server's own line, then callback-test's report of the answer
    assert "refused not_confirmed:" in out
    assert '{"Status":"Refused","reason":"not_confirmed"}' in out
    assert "203" in out and "Error status : 400." in out
