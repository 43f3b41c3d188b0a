"""Servers in child processes, so they never share a GIL (or a CPU account) with a client.

* :func:`emulator_process`: ``python -m oss_callback.testing`` (the OSS emulator CLI);
* :func:`discard_process`: ``python -m benchmarks._servers discard``: the emulator's uvicorn
  stack (uvloop + httptools, same socket setup) serving an ASGI app that reads and drops
  every body (:class:`benchmarks.bench_emulator.DiscardServer`).

Both yield a :class:`ServerProcess` with the endpoint and the process's CPU seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .nginx_sink import _proc_cpu_seconds

__all__ = ["ServerProcess", "discard_process", "emulator_process"]


@dataclass
class ServerProcess:
    endpoint: str
    pid: int
    proc: subprocess.Popen[str]
    log: Path

    def cpu_seconds(self) -> float:
        return _proc_cpu_seconds(self.pid)

    def check_alive(self) -> None:
        """Raise with the server's stderr if it has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"server {self.endpoint} exited with {self.proc.returncode}: "
                f"{self.log.read_text(errors='replace')[-2000:]}"
            )


@contextmanager
def _spawn(cmd: list[str], env: dict[str, str], ready: str) -> Iterator[ServerProcess]:
    # stderr goes to a file: a pipe nobody reads could fill up and block the server.
    log_fd, log_name = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
    log = Path(log_name)
    from . import _harness  # where the workers run (the repository or its snapshot)

    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log_fd, env=env, text=True, cwd=_harness.RUN_DIR)
    os.close(log_fd)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(ready, line)
            if match:
                yield ServerProcess(endpoint=match.group(1), pid=proc.pid, proc=proc, log=log)
                return
        raise RuntimeError(f"{' '.join(cmd)} did not start: {line.strip()} "
                           f"{log.read_text(errors='replace').strip()[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        log.unlink(missing_ok=True)


@contextmanager
def emulator_process(bucket: str, data_dir: str, region: str = "cn-hangzhou",
                     etag: str = "md5") -> Iterator[ServerProcess]:
    """The OSS emulator (default test credentials) with ``bucket``, storing in ``data_dir``.

    ``etag="fast"`` starts it with ``--etag fast`` (no MD5 unless the client sends
    Content-MD5; ETags from CRC-64 and size): label such rows as the fast mode.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")}
    cmd = [sys.executable, "-m", "oss_callback.testing", "--port", "0", "--bucket", bucket,
           "--region", region, "--data-dir", data_dir, "--etag", etag]
    with _spawn(cmd, env, r"listening on (http://\S+)") as server:
        yield server


@contextmanager
def discard_process() -> Iterator[ServerProcess]:
    """The emulator's uvicorn stack with a discarding ASGI app."""
    cmd = [sys.executable, "-m", "benchmarks._servers", "discard"]
    with _spawn(cmd, dict(os.environ), r"listening on (http://\S+)") as server:
        yield server


def _serve_discard() -> int:
    from oss_callback.testing._cli import keep_heap

    from .bench_emulator import DiscardServer

    keep_heap()  # as the emulator's command does: the same stack, tuned the same way
    server = DiscardServer()
    try:
        print(f"discard app listening on http://127.0.0.1:{server.port}", flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or terminates us)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["discard"]:
        print("usage: python -m benchmarks._servers discard", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_serve_discard())
