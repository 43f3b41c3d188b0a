"""Measurement plumbing: clients in subprocesses, interleaved rounds, ratios, the machine.

Every measured client runs in a process of its own (:mod:`benchmarks._worker` for the Python
clients, ``curl`` itself for the reference), so its CPU time and peak RSS are its own. The
cases of one comparison are run in *rounds*: each round runs every case once, in an order
rotated from round to round, and a ratio (``a / b``) is computed inside each round and then
the median over rounds is reported. Load from other work on the machine therefore hits both
sides of a ratio alike.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .nginx_sink import nginx_version

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REPO = Path(__file__).resolve().parent.parent
#: Where worker and server processes run (``python -m`` imports ``oss_callback`` and
#: ``benchmarks`` from here): the repository, or a snapshot of it (:func:`take_snapshot`).
RUN_DIR = REPO


@dataclass
class Run:
    """One measured run of one case."""

    wall: float
    cpu: float
    rss_peak_mib: float | None = None
    server_cpu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """Something to measure: ``fn`` runs it once and returns a :class:`Run`."""

    name: str
    fn: Callable[[], Run]
    bytes: int = 0  # payload bytes per run (for MB/s and CPU s/GiB)
    objects: int = 0  # objects per run (for objects/s)
    note: str = ""


@dataclass
class Measured:
    case: Case
    runs: list[Run]
    failures: list[str] = field(default_factory=list)  # runs that failed and were repeated

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rss(self) -> float | None:
        values = [r.rss_peak_mib for r in self.runs if r.rss_peak_mib is not None]
        return max(values) if values else None

    @property
    def server_cpu(self) -> float | None:
        values = [r.server_cpu for r in self.runs if r.server_cpu is not None]
        return statistics.median(values) if values else None


def run_rounds(cases: Sequence[Case], rounds: int, *, log: Callable[[str], None] = print,
               warmup: bool = False, retries: int = 1) -> dict[str, Measured]:
    """Run every case once per round, rotating the order each round (interleaved).

    ``warmup``: first run every case once, unrecorded (e.g. so that a server has reached
    its steady state: connections, heap, files to reuse). ``retries``: a run that fails is
    run again (at most this many times per case and round); the failure is kept in
    :attr:`Measured.failures` and shown in the case's note, never dropped silently.
    """
    results = {c.name: Measured(c, []) for c in cases}

    def attempt(case: Case, label: str) -> Run:
        for left in range(retries, -1, -1):
            try:
                return case.fn()
            except Exception as exc:
                if left == 0:
                    raise
                short = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                results[case.name].failures.append(f"{label}: {short}")
                log(f"  {label:<10} {case.name:<46} FAILED ({short}); running it again")
        raise AssertionError("unreachable")

    if warmup:
        for case in cases:
            run = attempt(case, "warm-up")
            log(f"  warm-up    {case.name:<46} {run.wall:7.3f} s  cpu {run.cpu:6.3f} s")
    for r in range(rounds):
        order = list(cases[r % len(cases):]) + list(cases[: r % len(cases)]) if cases else []
        for case in order:
            run = attempt(case, f"round {r + 1}/{rounds}")
            results[case.name].runs.append(run)
            log(f"  round {r + 1}/{rounds}  {case.name:<46} {run.wall:7.3f} s  "
                f"cpu {run.cpu:6.3f} s"
                + (f"  rss {run.rss_peak_mib:6.1f} MiB" if run.rss_peak_mib else ""))
    return results


def ratio(results: Mapping[str, Measured], a: str, b: str, attr: str = "wall") -> float | None:
    """Median over rounds of ``a.attr / b.attr`` (each round's pair measured back to back)."""
    if a not in results or b not in results:
        return None
    pairs = [
        getattr(x, attr) / getattr(y, attr)
        for x, y in zip(results[a].runs, results[b].runs, strict=False)
        if getattr(y, attr)
    ]
    return statistics.median(pairs) if pairs else None


# --------------------------------------------------------------------------- runners


def _server_cpu(server_cpu: Callable[[], float] | None) -> float | None:
    return server_cpu() if server_cpu is not None else None


def run_worker(spec: Mapping[str, Any], *, server_cpu: Callable[[], float] | None = None,
               on_ready: Callable[[int], None] | None = None, timeout: float = 1800,
               env: Mapping[str, str] | None = None) -> Run:
    """Run :mod:`benchmarks._worker` with ``spec``; its own timing of the operation.

    ``on_ready(pid)`` is called once the worker has set up its client, just before the timed
    operation starts (to attach a profiler). ``env``: variables added to the worker's
    environment (e.g. ``SSL_CERT_FILE``, as a user would trust a private CA).
    """
    spec = {**spec, "wait_go": on_ready is not None}
    before = _server_cpu(server_cpu)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._worker", json.dumps(dict(spec))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=RUN_DIR, env=_child_env(env),
    )
    try:
        if on_ready is not None:
            assert proc.stdin is not None and proc.stdout is not None
            ready = proc.stdout.readline()
            if ready.strip() == "READY":
                on_ready(proc.pid)
                proc.stdin.write("go\n")
                proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    after = _server_cpu(server_cpu)
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"worker {spec.get('client')}/{spec.get('op')} failed (exit {proc.returncode}): "
            f"{error_line(stderr)}\n{stderr[-3000:]}"
        )
    data = json.loads(line[len("RESULT "):])
    return Run(
        wall=data.pop("wall"), cpu=data.pop("cpu"), rss_peak_mib=data.pop("rss_peak_mib"),
        server_cpu=(after - before) if before is not None and after is not None else None,
        extra=data,
    )


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ours, minus a PYTHONPATH that could import
    another ``oss_callback`` than the one in :data:`RUN_DIR`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **(extra or {})}


def take_snapshot(dest: Path) -> Path:
    """Copy ``oss_callback`` and ``benchmarks`` to ``dest`` and run every child there.

    The tree may be edited while a run takes 20 minutes; with a snapshot every group
    measures the same code (the one described by :func:`source_state` of the snapshot).
    Children run with ``cwd`` = the snapshot, which comes first on ``sys.path`` for
    ``python -m`` (before the editable install's path to the live tree).
    """
    global RUN_DIR
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.png", "*.md")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for package in ("oss_callback", "benchmarks"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    RUN_DIR = dest
    return dest


def check_snapshot() -> str | None:
    """``None`` if the snapshot imports (as the workers will), else the error line."""
    code = ("import oss_callback, oss_callback.testing, benchmarks._worker, "
            "benchmarks._patches, benchmarks._servers; "
            f"assert oss_callback.__file__.startswith({str(RUN_DIR)!r}), oss_callback.__file__")
    proc = subprocess.run([sys.executable, "-c", code], cwd=RUN_DIR, env=_child_env(),
                          capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else error_line(proc.stderr)


def error_line(stderr: str) -> str:
    """The exception line of a traceback (``RequestError: ...``), else the last line."""
    lines = [ln.strip().lstrip("|").strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln and not set(ln) <= set("^~ +-")]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Timeout|Exit|Interrupt)\b[^:]*:", ln):
            return ln[:500]
    return lines[-1][:500] if lines else "(no output)"


def have_curl() -> bool:
    return shutil.which("curl") is not None


def run_curl(url: str, path: str, *, server_cpu: Callable[[], float] | None = None,
             expect_bytes: int | None = None, cacert: str | None = None) -> Run:
    """``curl -T path url``: wall, CPU (user+sys from wait4) and peak RSS of curl.

    ``cacert``: the CA to trust for an ``https://`` URL (``curl --cacert``).
    """
    cmd = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_upload}",
           "-H", "Expect:", "-H", "Content-Type:", *(["--cacert", cacert] if cacert else []),
           "-T", path, url]
    before = _server_cpu(server_cpu)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4's ru_maxrss of a child spawned by a big parent reports the parent's RSS (the
    # pre-exec address space counts): poll curl's own VmHWM instead.
    hwm_kib = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm_kib = max(hwm_kib, _proc_hwm_kib(proc.pid))
        time.sleep(0.005)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    after = _server_cpu(server_cpu)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed (exit {proc.returncode}): {err.strip()}")
    sent = int(float(out.strip() or 0))
    if expect_bytes is not None and sent != expect_bytes:
        raise RuntimeError(f"curl sent {sent} bytes, expected {expect_bytes}")
    return Run(
        wall=wall, cpu=usage.ru_utime + usage.ru_stime,
        rss_peak_mib=hwm_kib / 1024 if hwm_kib else None,
        server_cpu=(after - before) if before is not None and after is not None else None,
        extra={"bytes": sent},
    )


def _proc_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def make_file(path: Path, size: int) -> Path:
    """``size`` bytes of incompressible data (written once, so it is in the page cache)."""
    if path.exists() and path.stat().st_size == size:
        return path
    block = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n] if n < len(block) else block)
            left -= n
    return path


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / GiB:.1f} GiB"
    except ImportError:
        return "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _curl_version() -> str | None:
    if not have_curl():
        return None
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    match = re.match(r"curl (\S+)", first)
    return match.group(1) if match else first


def cpu_accounting() -> dict[str, float]:
    """Seconds so far: the machine's busy CPU and steal (``/proc/stat``), and this process's
    own CPU plus its reaped children's (workers, curl, nginx, servers).

    The difference of two readings tells how much CPU *other* processes used meanwhile, and
    how much the hypervisor took (steal): the load a run's numbers were measured under.
    """
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN)]
    own = sum(u.ru_utime + u.ru_stime for u in usage)
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {"own": own}
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields)) / tick
    steal = (fields[7] if len(fields) > 7 else 0) / tick
    return {"own": own, "busy": busy, "steal": steal}


def other_load(start: Mapping[str, float], end: Mapping[str, float], wall: float) -> str:
    """``12.3 CPU s by other processes (5% of the machine), 0.4 s steal``."""
    if "busy" not in start or "busy" not in end:
        return "unknown (no /proc/stat)"
    others = max(0.0, (end["busy"] - start["busy"]) - (end["own"] - start["own"]))
    cores = os.cpu_count() or 1
    steal = end["steal"] - start["steal"]
    return (f"{others:.0f} CPU s used by other processes during the run "
            f"({others / (wall * cores) * 100:.0f}% of the {cores} cores); "
            f"{steal:.1f} s stolen by the hypervisor")


def source_state(root: Path | None = None) -> str:
    """Which oss_callback code: git HEAD of the repository, files differing from it, and
    a digest of ``root/oss_callback`` (default: the directory the children run in).

    Read-only (``git --no-optional-locks``: the index is never refreshed or written). The
    digest is a SHA-256 over the package's ``.py`` files, so two runs of the same code match
    even with uncommitted edits in place.
    """
    import hashlib

    root = RUN_DIR if root is None else root
    digest = hashlib.sha256()
    for path in sorted((root / "oss_callback").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    text = f"digest {digest.hexdigest()[:12]}"
    if root != REPO:
        text += " (a snapshot taken at the start)"
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return text
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    changed = subprocess.run([*git, "diff", "--name-only", "HEAD", "--", "oss_callback"],
                             capture_output=True, text=True, check=False).stdout.split()
    dirty = f" + uncommitted changes to {len(changed)} file(s)" if changed else ""
    return f"git {head or '?'}{dirty}, {text}"


def machine_info() -> dict[str, str]:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nginx": nginx_version() or "not installed",
        "curl": _curl_version() or "not installed",
    }
    try:
        load = os.getloadavg()
        info["load at start"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        pass
    try:
        import ssl

        info["openssl"] = ssl.OPENSSL_VERSION
    except ImportError:
        pass
    for dist in ("oss-callback", "httpx", "httpcore", "h11", "anyio", "sniffio", "fastcrc",
                 "aiohttp", "httpx-aiohttp", "uvicorn", "uvloop", "httptools", "oss2",
                 "alibabacloud-oss-v2", "crcmod-plus", "requests", "urllib3", "psutil",
                 "matplotlib", "py-spy"):
        info[dist] = _version(dist)
    return info


# --------------------------------------------------------------------------- tables


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(out)


def results_rows(results: Mapping[str, Measured], reference: str | None
                 ) -> tuple[list[str], list[list[str]]]:
    """Rows of a results table: median wall, MB/s or obj/s, CPU, RSS, server CPU, ratios."""
    header = ["case", "wall s", "MiB/s", "obj/s", "CPU s", "CPU s/GiB", "peak RSS MiB",
              "server CPU s", "x ref wall", "x ref CPU", "note"]
    rows = []
    for name, m in results.items():
        c = m.case
        rows.append([
            name,
            fmt(m.wall, ".3f"),
            fmt(c.bytes / MiB / m.wall if c.bytes and m.wall else None, ".0f"),
            fmt(c.objects / m.wall if c.objects and m.wall else None, ".0f"),
            fmt(m.cpu, ".3f"),
            fmt(m.cpu / (c.bytes / GiB) if c.bytes and c.bytes >= MiB else None, ".2f"),
            fmt(m.rss, ".0f"),
            fmt(m.server_cpu, ".2f"),
            fmt(ratio(results, name, reference) if reference else None, ".2f", "x"),
            fmt(ratio(results, name, reference, "cpu") if reference else None, ".2f", "x"),
            "; ".join(x for x in (c.note, f"{len(m.failures)} failed run(s) repeated, first: "
                                  f"{m.failures[0]}" if m.failures else "") if x),
        ])
    return header, rows


@dataclass
class Target:
    """One target: ``measured`` against ``limit`` (``<=``, ``>=`` or ``>``).

    ``informational``: shown with its limit for orientation, but not a floor (status ``info``).
    """

    name: str
    measured: float | None
    op: str  # "<=" | ">=" | ">"
    limit: float
    unit: str = "x"
    detail: str = ""
    informational: bool = False

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return {"<=": self.measured <= self.limit, ">=": self.measured >= self.limit,
                ">": self.measured > self.limit}[self.op]

    @property
    def status(self) -> str:
        if self.measured is None:
            return "skipped"
        if self.informational:
            return "info"
        return "met" if self.met else "MISSED"

    def row(self) -> list[str]:
        value = fmt(self.measured, ".2f", self.unit if self.measured is not None else "")
        return [self.name, value, f"{self.op} {self.limit:g}{self.unit}", self.status,
                self.detail]
