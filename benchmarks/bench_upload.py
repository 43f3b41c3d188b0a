"""Upload benchmarks of issue #8: the SDK against ``curl -T`` and the official SDKs.

Run with ``python -m benchmarks`` (``nox -s bench``); ``--quick`` shrinks every size so the
whole run takes about a minute. Results are printed and written to ``benchmarks/RESULTS.md``
(with ``benchmarks/scaling.png``).

Groups (``--only`` picks some):

* ``sink``: one large file (1 GiB; quick: 128 MiB) into an OSS-shaped nginx sink
  (:mod:`benchmarks.nginx_sink`): ``curl -T``, our ``put_object`` and ``resumable_upload``
  (async and sync facade), ``oss2.resumable_upload`` and the v2 ``Uploader`` with CRC-64 on
  and off, interleaved in rounds;
* ``small``: 2,000 (quick: 500) 4 KiB objects, 64 in flight on one ``AsyncClient`` vs oss2
  and the v2 SDK with 64 threads;
* ``memory``: peak RSS of a resumable upload with 8 MiB parts, concurrency 8, for 1 GiB and
  4 GiB (quick: 128 and 512 MiB);
* ``scaling``: resumable upload wall time for concurrency 1/2/4/8/16 x part size 1/8/32 MiB;
* ``profile``: where the client's time goes (py-spy when it can attach, else cProfile) on the
  resumable upload and the small puts;
* ``ablations``: each core optimisation switched off (:mod:`benchmarks._patches`,
  monkeypatched into the worker) against the shipped code, interleaved (not run by
  ``--quick`` unless asked);
* ``emulator``: ``curl -T`` into the emulator vs into the same uvicorn stack discarding, and
  the SDK's resumable upload into the emulator vs ``curl -T`` into it.

When nginx is not installed the sink groups are skipped with a message (Debian:
``apt-get install nginx-light``); without curl the curl rows and their ratios are skipped.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import hmac
import itertools
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._harness import (
    Case,
    GiB,
    Measured,
    MiB,
    Run,
    Target,
    fmt,
    have_curl,
    machine_info,
    make_file,
    markdown_table,
    ratio,
    results_rows,
    run_curl,
    run_rounds,
    run_worker,
    text_table,
)
from ._servers import discard_process, emulator_process
from .nginx_sink import NginxSink, find_nginx

HERE = Path(__file__).resolve().parent
BUCKET = "bench"
REGION = "cn-hangzhou"
SINK_KEYS = ("bench-access-key-id", "bench-access-key-secret")
GROUPS = ("sink", "small", "memory", "scaling", "profile", "ablations", "emulator")
MEM_PARTS, MEM_PART_SIZE, MEM_OVERHEAD = 8, 8 * MiB, 80 * MiB


@dataclass
class Settings:
    quick: bool
    size: int
    mem_sizes: tuple[int, ...]
    small_count: int
    small_size: int
    inflight: int
    rounds: int
    part_size: int
    concurrency: int
    scaling_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    scaling_parts: tuple[int, ...] = (1 * MiB, 8 * MiB, 32 * MiB)
    groups: tuple[str, ...] = GROUPS
    output_dir: Path = HERE  # RESULTS.md's folder: scaling.png goes beside it


@dataclass
class Report:
    settings: Settings
    info: dict[str, str]
    targets: list[Target] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, markdown)
    skipped: list[str] = field(default_factory=list)
    scaling_png: Path | None = None

    def add(self, title: str, markdown: str, text: str | None = None) -> None:
        self.sections.append((title, markdown))
        print(f"\n== {title}\n{text if text is not None else markdown}", flush=True)


_keys = itertools.count()


def _key(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_keys)}"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _size_label(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


# --------------------------------------------------------------------------- cases


class Env:
    """Where the clients upload to: endpoint, credentials, server CPU probe, scratch dir."""

    def __init__(self, endpoint: str, keys: tuple[str, str], server_cpu: Callable[[], float],
                 scratch: Path, key: str | None = None) -> None:
        self.endpoint = endpoint
        self.keys = keys
        self.server_cpu = server_cpu
        self.scratch = scratch
        #: one object key for every run (each overwrites the last), else a fresh key per run
        self.key = key
        (scratch / "ckpt").mkdir(parents=True, exist_ok=True)

    def spec(self, client: str, op: str, **kw: Any) -> dict[str, Any]:
        return {
            "client": client, "op": op, "endpoint": self.endpoint, "bucket": BUCKET,
            "access_key_id": self.keys[0], "access_key_secret": self.keys[1],
            "region": REGION, "checkpoint_dir": str(self.scratch / "ckpt"), **kw,
        }

    def worker(self, name: str, client: str, op: str, *, bytes_: int = 0, objects: int = 0,
               note: str = "", **kw: Any) -> Case:
        def fn() -> Run:
            return run_worker(self.spec(client, op, key=self.key or _key(client), **kw),
                              server_cpu=self.server_cpu)

        return Case(name, fn, bytes=bytes_, objects=objects, note=note)

    def curl(self, name: str, path: Path, url: Callable[[], str], note: str = "") -> Case:
        size = path.stat().st_size

        def fn() -> Run:
            return run_curl(url(), str(path), server_cpu=self.server_cpu, expect_bytes=size)

        return Case(name, fn, bytes=size, note=note)


def _table(report: Report, title: str, results: Mapping[str, Measured], reference: str | None,
           intro: str = "") -> None:
    header, rows = results_rows(results, reference)
    md = (intro + "\n\n" if intro else "") + markdown_table(header, rows)
    report.add(title, md, text_table(header, rows))


# --------------------------------------------------------------------------- sink groups

CURL = "curl -T"
PUT = "sdk put_object (async)"
PUT_SYNC = "sdk put_object (sync facade)"
RES = "sdk resumable_upload (async)"
RES_SYNC = "sdk resumable_upload (sync facade)"
OSS2_ON, OSS2_OFF = "oss2.resumable_upload, CRC on", "oss2.resumable_upload, CRC off"
V2_ON, V2_OFF = "v2 Uploader, CRC on", "v2 Uploader, CRC off"
OSS2_PUT = "oss2 put_object_from_file, CRC on"


def sink_large(report: Report, s: Settings, env: Env, big: Path) -> None:
    size = big.stat().st_size
    ps, cc = s.part_size, s.concurrency
    common: dict[str, Any] = {"file": str(big), "part_size": ps, "concurrency": cc}
    cases: list[Case] = []
    if have_curl():
        cases.append(env.curl(CURL, big, lambda: f"{env.endpoint}/{BUCKET}/{_key('curl')}",
                              note="reference"))
    cases += [
        env.worker(PUT, "sdk", "put", bytes_=size, file=str(big), note="CRC-64 on"),
        env.worker(PUT_SYNC, "sdk_sync", "put", bytes_=size, file=str(big)),
        env.worker(RES, "sdk", "resumable", bytes_=size, **common,
                   note=f"{ps // MiB} MiB x {cc}, checkpoint + CRC"),
        env.worker(RES_SYNC, "sdk_sync", "resumable", bytes_=size, **common),
        env.worker(OSS2_ON, "oss2", "resumable", bytes_=size, crc=True, **common,
                   note="num_threads=" + str(cc)),
        env.worker(OSS2_OFF, "oss2", "resumable", bytes_=size, crc=False, **common,
                   note="enable_crc=False"),
        env.worker(V2_ON, "v2", "resumable", bytes_=size, crc=True, **common,
                   note=f"parallel_num={cc}, checkpoint on"),
        env.worker(V2_OFF, "v2", "resumable", bytes_=size, crc=False, **common,
                   note="disable_upload_crc64_check"),
        env.worker(OSS2_PUT, "oss2", "put", bytes_=size, file=str(big), note="for reference"),
    ]
    _log(f"\n[sink] {_size_label(size)} from a file into nginx, {s.rounds} interleaved rounds")
    results = run_rounds(cases, s.rounds, log=_log)
    ref = CURL if CURL in results else None
    _table(report, f"Large upload ({_size_label(size)}) into the nginx sink", results, ref,
           "Median of the rounds; `x ref` columns are medians of per-round ratios to "
           "`curl -T` of the same bytes. `server CPU` is nginx's (it reads bodies 4 KiB at a "
           "time when discarding).")
    t = report.targets
    t.append(Target(f"put_object {_size_label(size)} vs curl -T (wall)",
                    ratio(results, PUT, CURL), "<=", 1.5))
    t.append(Target(f"resumable_upload {_size_label(size)} vs curl -T (wall)",
                    ratio(results, RES, CURL), "<=", 1.6,
                    detail=f"{ps // MiB} MiB parts, concurrency {cc}, checkpoint + CRC"))
    for peer, limit, op in ((OSS2_ON, 4.0, ">="), (V2_ON, 4.0, ">="),
                            (OSS2_OFF, 1.0, ">"), (V2_OFF, 1.0, ">")):
        t.append(Target(f"{peer} / resumable_upload (wall; how much faster we are)",
                        ratio(results, peer, RES), op, limit))
    t.append(Target("resumable_upload client CPU vs curl's", ratio(results, RES, CURL, "cpu"),
                    "<=", 1.5,
                    detail=f"{fmt(results[RES].cpu / (size / GiB))} CPU s/GiB"))
    t.append(Target("sync facade / async, resumable_upload (wall)",
                    ratio(results, RES_SYNC, RES), "<=", 1.1))
    t.append(Target("sync facade / async, put_object (wall; not a target)",
                    ratio(results, PUT_SYNC, PUT), "<=", 1.1, detail="informational"))


SMALL = "sdk AsyncClient, {n} in flight"
SMALL_SYNC = "sdk sync facade, {n} threads"
SMALL_OSS2 = "oss2, {n} threads"
SMALL_V2 = "v2 Client, {n} threads"


def sink_small(report: Report, s: Settings, env: Env) -> None:
    n, count, size = s.inflight, s.small_count, s.small_size
    common: dict[str, Any] = {"count": count, "object_size": size, "inflight": n}
    names = [x.format(n=n) for x in (SMALL, SMALL_SYNC, SMALL_OSS2, SMALL_V2)]
    cases = [
        env.worker(names[0], "sdk", "small", objects=count, note="one AsyncClient", **common),
        env.worker(names[1], "sdk_sync", "small", objects=count, note="one Client", **common),
        env.worker(names[2], "oss2", "small", objects=count,
                   note="one Bucket, pool_size=" + str(n), **common),
        env.worker(names[3], "v2", "small", objects=count, note="one Client", **common),
    ]
    _log(f"\n[small] {count} x {size // 1024} KiB puts, {n} in flight, {s.rounds} rounds")
    results = run_rounds(cases, s.rounds, log=_log)
    _table(report, f"Small objects ({count} x {size // 1024} KiB PutObject, {n} in flight)",
           results, names[2], "`x ref` is relative to oss2 (lower wall is better).")
    report.targets.append(Target(
        f"small puts: objects/s vs oss2 with {n} threads", ratio(results, names[2], names[0]),
        ">=", 3.0, detail=f"{fmt(count / results[names[0]].wall, '.0f')} vs "
        f"{fmt(count / results[names[2]].wall, '.0f')} objects/s"))


def sink_memory(report: Report, s: Settings, env: Env, files: Mapping[int, Path]) -> None:
    limit = (MEM_PARTS * MEM_PART_SIZE + MEM_OVERHEAD) / MiB
    cases = [
        env.worker(f"resumable {_size_label(size)}, 8 MiB x 8", "sdk", "resumable",
                   bytes_=size, file=str(path), part_size=MEM_PART_SIZE,
                   concurrency=MEM_PARTS)
        for size, path in sorted(files.items())
    ]
    _log("\n[memory] peak RSS of resumable uploads, 8 MiB parts, concurrency 8")
    results = run_rounds(cases, 1, log=_log)
    _table(report, "Memory (peak RSS of the client process)", results, None,
           f"Limit: 8 x 8 MiB + 80 MiB = {limit:.0f} MiB (peak RSS includes the interpreter "
           "and imports; `rss_before` is the RSS just before the upload).")
    rss = {size: m.rss for size, m in zip(sorted(files), results.values(), strict=True)}
    for size, value in rss.items():
        report.targets.append(Target(f"peak RSS, {_size_label(size)} resumable, 8 MiB x 8",
                                     value, "<=", limit, unit=" MiB"))
    sizes = sorted(rss)
    if len(sizes) >= 2 and all(rss[x] is not None for x in sizes):
        lo, hi = rss[sizes[0]], rss[sizes[-1]]
        assert lo is not None and hi is not None
        report.targets.append(Target(
            f"peak RSS flat in file size ({_size_label(sizes[-1])} minus "
            f"{_size_label(sizes[0])})", hi - lo, "<=", 16, unit=" MiB"))


def sink_scaling(report: Report, s: Settings, env: Env, big: Path) -> None:
    size = big.stat().st_size
    cases: list[Case] = []
    if have_curl():
        cases.append(env.curl(CURL, big, lambda: f"{env.endpoint}/{BUCKET}/{_key('curl')}"))
    grid: dict[tuple[int, int], str] = {}
    for ps in s.scaling_parts:
        for cc in s.scaling_concurrency:
            name = f"{ps // MiB} MiB parts, concurrency {cc}"
            grid[(ps, cc)] = name
            cases.append(env.worker(name, "sdk", "resumable", bytes_=size, file=str(big),
                                    part_size=ps, concurrency=cc))
    _log(f"\n[scaling] {_size_label(size)} resumable uploads into nginx")
    results = run_rounds(cases, 1, log=_log)
    header = ["part size \\ concurrency", *(str(c) for c in s.scaling_concurrency)]
    rows_wall, rows_cpu = [], []
    for ps in s.scaling_parts:
        walls = [results[grid[(ps, cc)]] for cc in s.scaling_concurrency]
        rows_wall.append([f"{ps // MiB} MiB"] + [
            f"{m.wall:.2f} s ({size / MiB / m.wall:.0f} MiB/s)" for m in walls])
        rows_cpu.append([f"{ps // MiB} MiB"] + [f"{m.cpu:.2f}" for m in walls])
    curl_note = (f"`curl -T` of the same bytes: {results[CURL].wall:.2f} s, "
                 f"{results[CURL].cpu:.2f} CPU s." if CURL in results else "")
    md = (f"Wall time of `resumable_upload` ({_size_label(size)}, checkpoint + CRC, one run "
          f"each). {curl_note}\n\n" + markdown_table(header, rows_wall)
          + "\n\nClient CPU seconds:\n\n" + markdown_table(header, rows_cpu))
    png = _plot_scaling(s, size, grid, results)
    if png is not None:
        report.scaling_png = png
        md += f"\n\n![scaling]({png.name})"
    report.add("Scaling: concurrency x part size", md,
               text_table(header, rows_wall) + "\nCPU s:\n" + text_table(header, rows_cpu)
               + "\n" + curl_note)


def _plot_scaling(s: Settings, size: int, grid: Mapping[tuple[int, int], str],
                  results: Mapping[str, Measured]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed (pip install -e '.[bench]'): no scaling.png")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = list(s.scaling_concurrency)
    for ps in s.scaling_parts:
        ms = [results[grid[(ps, cc)]] for cc in xs]
        ax1.plot(xs, [m.wall for m in ms], marker="o", label=f"{ps // MiB} MiB parts")
        ax2.plot(xs, [m.cpu for m in ms], marker="o", label=f"{ps // MiB} MiB parts")
    if CURL in results:
        ax1.axhline(results[CURL].wall, color="gray", linestyle="--", label="curl -T")
        ax2.axhline(results[CURL].cpu, color="gray", linestyle="--", label="curl -T")
    for ax, label in ((ax1, "wall time (s)"), (ax2, "client CPU (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrency (parts in flight)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"resumable_upload of {_size_label(size)} into an nginx sink "
                 f"({os.cpu_count()} CPUs)")
    fig.tight_layout()
    out = s.output_dir / "scaling.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- profiles


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


_IDLE = ("Condition.wait", "EpollSelector.select", "Event.wait", "_shutdown", "Queue.get",
         "Thread.join", "select (selectors", "_wait_for_tstate_lock", "sleep (")


def summarize_py_spy(raw: Path, top: int = 14) -> str:
    """Self and inclusive time per function from py-spy's raw (collapsed) output."""
    leaf: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    busy = idle = imports = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any("_find_and_load" in f for f in frames):
            imports += n
            continue
        if any(frames[-1].startswith(p) or p in frames[-1] for p in _IDLE):
            idle += n
            continue
        busy += n
        leaf[frames[-1]] += n
        for f in set(frames):
            if any(m in f for m in ("oss_callback/", "httpcore/", "httpx/", "anyio/", "h11/")):
                incl[f] += n
    if not busy:
        return "(no busy samples)"
    lines = [f"busy samples: {busy} (idle/waiting samples left out: {idle}; imports: {imports})",
             "", "self time (leaf frames), % of busy samples:"]
    lines += [f"  {n / busy * 100:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    lines += ["", "inclusive time in oss_callback/httpx/httpcore/anyio/h11 frames:"]
    lines += [f"  {n / busy * 100:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def summarize_cprofile(path: Path, top: int = 14) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def profile_group(report: Report, s: Settings, env: Env, big: Path) -> None:
    size = big.stat().st_size
    jobs = {
        f"resumable_upload {_size_label(size)}, {s.part_size // MiB} MiB x {s.concurrency}":
            env.spec("sdk", "resumable", key=_key("prof"), file=str(big),
                     part_size=s.part_size, concurrency=s.concurrency),
        f"{s.small_count} small puts, {s.inflight} in flight":
            env.spec("sdk", "small", key=_key("prof"), count=s.small_count,
                     object_size=s.small_size, inflight=s.inflight),
    }
    spy = _py_spy()
    parts: list[str] = []
    _log("\n[profile] " + ("py-spy + cProfile" if spy else "cProfile (py-spy not found)"))
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        for i, (title, spec) in enumerate(jobs.items()):
            body = []
            if spy:
                raw = Path(tmp) / f"spy{i}.txt"
                recorder: list[subprocess.Popen[str]] = []

                def attach(pid: int, raw: Path = raw, recorder: list[Any] = recorder) -> None:
                    recorder.append(subprocess.Popen(
                        [spy, "record", "-r", "250", "--format", "raw", "-o", str(raw),
                         "--nonblocking", "--pid", str(pid)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                    time.sleep(0.5)  # let it attach before the operation starts

                run_worker({**spec, "key": _key("prof")}, server_cpu=env.server_cpu,
                           on_ready=attach)
                _, err = recorder[0].communicate(timeout=60)
                if recorder[0].returncode == 0 and raw.exists():
                    body.append("py-spy (all threads, 250 Hz, the operation only):\n"
                                + summarize_py_spy(raw))
                else:
                    body.append("py-spy could not record (it needs ptrace permission): "
                                + err.strip()[-300:])
            prof = Path(tmp) / f"prof{i}.prof"
            run = run_worker({**spec, "key": _key("prof"), "profile": str(prof)},
                             server_cpu=env.server_cpu)
            body.append(f"cProfile (event-loop thread only; {run.wall:.2f} s wall under the "
                        f"profiler), top by own time:\n" + summarize_cprofile(prof))
            parts.append(f"### {title}\n\n```\n" + "\n\n".join(body) + "\n```")
            _log(f"  profiled {title}")
    report.add("Profiles (client side, on the nginx sink)", "\n\n".join(parts))


# --------------------------------------------------------------------------- ablations

Rows = list[tuple[str, tuple[str, ...]]]

#: (label, patches) rows: each optimisation switched off by :mod:`benchmarks._patches`.
ABLATION_LARGE: Rows = [
    ("as shipped", ()),
    ("without the checkpoint throttle", ("checkpoint_every_part",)),
    ("without thread-per-request file sends", ("no_wire",)),
    ("without both", ("no_wire", "checkpoint_every_part")),
]
ABLATION_PUT: Rows = [
    ("as shipped", ()),
    ("with 1 MiB reads", ("long_body_1m",)),
    ("without thread-per-request file sends", ("no_wire",)),
]
ABLATION_SMALL: Rows = [
    ("as shipped", ()),
    ("without the lean pool (httpx + our O(1) pool)", ("no_lean",)),
    ("without the lean pool, httpx's own pool", ("no_lean", "httpcore_pool")),
]


def ablations_group(report: Report, s: Settings, env: Env, big: Path) -> None:
    """Each core optimisation switched off in the worker, against the shipped code."""
    size = big.stat().st_size
    base: dict[str, str] = {}

    def spec(kind: str, label: str, patches: tuple[str, ...], **kw: Any) -> Any:
        name = f"{kind} {label}"
        base[name] = f"{kind} as shipped"
        return env.worker(name, "sdk", kind, patches=list(patches), note=", ".join(patches),
                          **kw)

    large = [spec("resumable", label, patches, bytes_=size, file=str(big),
                  part_size=s.part_size, concurrency=s.concurrency)
             for label, patches in ABLATION_LARGE]
    large += [spec("put", label, patches, bytes_=size, file=str(big))
              for label, patches in ABLATION_PUT]
    if have_curl():
        large.append(env.curl(CURL, big, lambda: f"{env.endpoint}/{BUCKET}/{_key('curl')}",
                              note="reference"))
    small = [spec("small", label, patches, objects=s.small_count, count=s.small_count,
                  object_size=s.small_size, inflight=s.inflight)
             for label, patches in ABLATION_SMALL]
    _log(f"\n[ablations] optimisations switched off, {s.rounds} interleaved rounds")
    results = run_rounds(large, s.rounds, log=_log)
    results.update(run_rounds(small, s.rounds, log=_log))
    header, rows = results_rows(results, None)
    for row, name in zip(rows, results, strict=True):
        if name == CURL:
            row[8] = row[9] = ""
            continue
        row[8] = fmt(ratio(results, name, base[name]), ".2f", "x")
        row[9] = fmt(ratio(results, name, base[name], "cpu"), ".2f", "x")
        if name.startswith(("resumable", "put")) and CURL in results:
            row[10] = (row[10] + "; " if row[10] else "") + (
                f"{fmt(ratio(results, name, CURL), '.2f')}x curl wall, "
                f"{fmt(ratio(results, name, CURL, 'cpu'), '.2f')}x curl CPU")
    header[8:10] = ["x shipped wall", "x shipped CPU"]
    intro = ("Each optimisation is switched off in the worker by `benchmarks/_patches.py` "
             "(oss_callback is not edited); ratios are to the shipped code in the same "
             f"rounds (above 1.00x: the optimisation helps). Large: {_size_label(size)}, "
             f"{s.part_size // MiB} MiB x {s.concurrency}, nginx sink; small: "
             f"{s.small_count} x {s.small_size // 1024} KiB, {s.inflight} in flight.")
    report.add("Ablations: what each optimisation buys",
               intro + "\n\n" + markdown_table(header, rows), text_table(header, rows))


# --------------------------------------------------------------------------- emulator


def presign_v1(endpoint: str, key_id: str, secret: str, bucket: str, key: str,
               method: str = "PUT", expires_in: int = 3600) -> str:
    expires = str(int(time.time()) + expires_in)
    to_sign = f"{method}\n\n\n{expires}\n/{bucket}/{key}"
    sig = base64.b64encode(hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).digest())
    return (f"{endpoint}/{bucket}/{quote(key)}?OSSAccessKeyId={quote(key_id, safe='')}"
            f"&Expires={expires}&Signature={quote(sig.decode(), safe='')}")


EMU_DISCARD = "curl -T -> uvicorn discard app"
EMU_CURL = "curl -T -> emulator PutObject"
EMU_RES = "sdk resumable_upload -> emulator"
EMU_PUT = "sdk put_object -> emulator"
EMU_OSS2 = "oss2.resumable_upload -> emulator"
EMU_V2 = "v2 Uploader -> emulator"
EMU_FAST_CURL = "curl -T -> emulator --etag fast"
EMU_KEY = "bench.bin"
EMU_FAST_RES = "sdk resumable_upload -> emulator --etag fast"


def _emulator_data_root(given: Path | None, scratch: Path, size: int) -> tuple[Path, str]:
    """Where the emulators store objects: ``given``, else tmpfs when it has room.

    On a disk, a few GiB of uploads in a row hit the kernel's dirty-page writeback limit,
    and the emulator then measures the disk rather than itself.
    """
    if given is not None:
        return given, "as given"
    shm = Path("/dev/shm")
    try:
        free = shutil.disk_usage(shm).free if shm.is_dir() else 0
    except OSError:
        free = 0
    if free >= 6 * size and os.access(shm, os.W_OK):
        return shm, "tmpfs, so that disk writeback does not gate the emulator"
    return scratch, "the scratch folder: no tmpfs with room"


def emulator_group(report: Report, s: Settings, scratch: Path, big: Path,
                   data_root: Path | None = None) -> None:
    from oss_callback.testing import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET

    if not have_curl():
        report.skipped.append("emulator (needs curl)")
        _log("curl not found: skipping the emulator benchmarks")
        return
    size = big.stat().st_size
    keys = (DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET)
    root, where = _emulator_data_root(data_root, scratch, size)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-emulator-data-", dir=root))
    fast_dir = Path(tempfile.mkdtemp(prefix="bench-emulator-fast-", dir=root))
    with discard_process() as discard, emulator_process(BUCKET, str(data_dir)) as emu, \
            emulator_process(BUCKET, str(fast_dir), etag="fast") as fast:
        d_env = Env(discard.endpoint, keys, discard.cpu_seconds, scratch)
        # One key per emulator, overwritten by every run: a store of many 1 GiB objects
        # needs fresh memory pages, which a VM may hand out slowly (measured here: from
        # the 4th GiB in tmpfs, a 1 GiB put took 3x the server CPU).  The emulator writes
        # each run over the files of the object it replaces (its spare files), so from
        # the third run of a case on, no fresh pages are needed.
        e_env = Env(emu.endpoint, keys, emu.cpu_seconds, scratch, key=EMU_KEY)
        f_env = Env(fast.endpoint, keys, fast.cpu_seconds, scratch, key=EMU_KEY)
        cases = [
            d_env.curl(EMU_DISCARD, big, lambda: f"{discard.endpoint}/{BUCKET}/discard.bin",
                       note="same uvicorn stack, app drops the body"),
            e_env.curl(EMU_CURL, big, lambda: presign_v1(emu.endpoint, *keys, BUCKET,
                                                         EMU_KEY),
                       note="presigned V1; streams to disk with MD5 + CRC-64"),
            e_env.worker(EMU_RES, "sdk", "resumable", bytes_=size, file=str(big),
                         part_size=s.part_size, concurrency=s.concurrency,
                         note=f"{s.part_size // MiB} MiB x {s.concurrency}, incl. Complete"),
            e_env.worker(EMU_PUT, "sdk", "put", bytes_=size, file=str(big),
                         note="for reference"),
            e_env.worker(EMU_OSS2, "oss2", "resumable", bytes_=size, crc=True, file=str(big),
                         part_size=s.part_size, concurrency=s.concurrency,
                         note=f"num_threads={s.concurrency}, CRC on"),
            e_env.worker(EMU_V2, "v2", "resumable", bytes_=size, crc=True, file=str(big),
                         part_size=s.part_size, concurrency=s.concurrency,
                         note=f"parallel_num={s.concurrency}, CRC on"),
            f_env.curl(EMU_FAST_CURL, big, lambda: presign_v1(fast.endpoint, *keys, BUCKET,
                                                              EMU_KEY),
                       note="--etag fast: no MD5 (ETag from CRC-64 + size)"),
            f_env.worker(EMU_FAST_RES, "sdk", "resumable", bytes_=size, file=str(big),
                         part_size=s.part_size, concurrency=s.concurrency,
                         note="--etag fast"),
        ]
        _log(f"\n[emulator] {_size_label(size)} end to end, a warm-up and {s.rounds} rounds")
        try:
            results = run_rounds(cases, s.rounds, log=_log, warmup=True)
        except Exception:
            discard.check_alive()
            emu.check_alive()
            fast.check_alive()
            raise
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(fast_dir, ignore_errors=True)
    _table(report, f"Emulator end to end ({_size_label(size)})", results, EMU_CURL,
           f"Server and client are separate processes; `server CPU` is the uvicorn process's; "
           f"the emulators store objects under {root} ({where}; `--emulator-data-dir`). "
           "The default emulator is faithful to OSS (ETag = MD5 of the content, which costs "
           "1.6-1.7 CPU s/GiB here, on a thread of its own: the floor of its wall time); "
           "`--etag fast` computes no MD5 unless the client sends Content-MD5. Both emulator "
           "processes and the discard app run with `keep_heap()` (glibc keeps freed heap "
           "memory), and the emulator writes over the files of the object it replaces. "
           "Every case runs once before the rounds, unrecorded: a fresh emulator's first "
           "gigabytes land on memory pages the VM has not handed out yet (up to 4x the "
           "server CPU here), which says more about the VM than about the emulator. "
           "`x ref` is relative to `curl -T` into the default emulator.")
    report.targets.append(Target("emulator ingest: curl -T into emulator / into discard app",
                                 ratio(results, EMU_CURL, EMU_DISCARD), "<=", 1.3,
                                 detail="default: MD5 ETags, as OSS"))
    report.targets.append(Target("emulator ingest, --etag fast / discard app",
                                 ratio(results, EMU_FAST_CURL, EMU_DISCARD), "<=", 1.3,
                                 detail="no MD5"))
    report.targets.append(Target(
        f"SDK resumable_upload into emulator / curl -T into it ({_size_label(size)})",
        ratio(results, EMU_RES, EMU_CURL), "<=", 1.2, detail="default: MD5 ETags"))
    report.targets.append(Target(
        "SDK resumable_upload into emulator / curl -T into it, --etag fast",
        ratio(results, EMU_FAST_RES, EMU_FAST_CURL), "<=", 1.2, detail="no MD5"))
    for peer in (EMU_OSS2, EMU_V2):
        if peer in results:
            report.targets.append(Target(
                f"{peer} / sdk resumable_upload -> emulator (wall; informational)",
                ratio(results, peer, EMU_RES), ">=", 1.0, detail="issue #4 comparison"))


# --------------------------------------------------------------------------- report


def write_results(report: Report, path: Path) -> None:
    s = report.settings
    lines = [
        "# Upload benchmarks (issue #8)",
        "",
        f"Generated by `python -m benchmarks{' --quick' if s.quick else ''}` "
        f"on {report.info['date']}. Do not edit: rerun to refresh.",
        "",
        f"Mode: {'quick' if s.quick else 'full'}; large file {_size_label(s.size)}; "
        f"{s.rounds} interleaved round(s) per comparison; small puts {s.small_count} x "
        f"{s.small_size // 1024} KiB with {s.inflight} in flight; memory runs at "
        + ", ".join(_size_label(x) for x in s.mem_sizes) + ".",
        "",
        "## Machine",
        "",
        markdown_table(["", "value"], [[k, v] for k, v in report.info.items()]),
        "",
        "## Targets",
        "",
        *(["The targets are set for 1 GiB; at this quick run's smaller sizes, fixed costs "
           "(connections, Initiate/Complete, checkpoint fsyncs) weigh more, so a quick run "
           "is a smoke test, not a verdict.", ""] if s.quick else []),
        markdown_table(["target", "measured", "limit", "status", "detail"],
                       [t.row() for t in report.targets]),
    ]
    if report.skipped:
        lines += ["", "Skipped: " + "; ".join(report.skipped) + "."]
    for title, md in report.sections:
        lines += ["", f"## {title}", "", md]
    lines += ["", "## How this is measured", "", _METHOD]
    path.write_text("\n".join(lines) + "\n")


_METHOD = """\
* Each client run is a separate process (`python -m benchmarks._worker SPEC`; curl itself for
  the reference). The worker sets the client up first and times only the operation: wall
  time, CPU of the whole process (user + system, all threads, `getrusage`) and peak RSS
  (`VmHWM`, including the interpreter). curl's CPU comes from `wait4`, its peak RSS from
  polling its `VmHWM` (wait4's `ru_maxrss` would report the spawning parent's).
* The cases of one comparison run in rounds, each round in a rotated order; ratios are taken
  inside a round and the median over rounds is reported, so load from other work on the
  machine affects both sides of a ratio.
* The source file is written once per size in a temp dir (it stays in the page cache).
* The nginx sink (`benchmarks/nginx_sink.py`: one nginx process, `master_process off`) answers
  PutObject/UploadPart with an ETag, Initiate/Complete/ListParts with OSS XML, and sends no
  `x-oss-hash-crc64ecma`, so clients compute CRC-64 but have nothing to compare it with.
  nginx discards bodies with 4 KiB reads (about 0.6 CPU s per GiB), so on 2 cores the sink
  and the client compete for CPU; `server CPU` shows the sink's share.
* Peers: `oss2.resumable_upload(bucket, key, file, part_size=, num_threads=,
  multipart_threshold=part_size, store=ResumableStore(tmp))` on `oss2.Bucket(...,
  enable_crc=...)`; the v2 SDK's `client.uploader(part_size=, parallel_num=,
  enable_checkpoint=True, checkpoint_dir=tmp).upload_file(...)` with
  `disable_upload_crc64_check` for CRC off. Our SDK always computes CRC-64.
"""


# --------------------------------------------------------------------------- main


def _guarded(report: Report, group: str, fn: Callable[[], None]) -> None:
    """Run one group; a failure is reported (and the other groups still run)."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        msg = f"group '{group}' FAILED: {type(exc).__name__}: {str(exc).strip()[-600:]}"
        print("\n" + msg, flush=True)
        report.skipped.append(msg)


def settings_from(args: argparse.Namespace) -> Settings:
    size = args.size or (128 * MiB if args.quick else 1 * GiB)
    if args.only:
        groups = tuple(g.strip() for g in args.only.split(","))
    else:  # --quick leaves out the ablations (ask for them with --only ablations)
        groups = tuple(g for g in GROUPS if not (args.quick and g == "ablations"))
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise SystemExit(f"unknown group(s) {', '.join(sorted(unknown))}; choose from "
                         + ", ".join(GROUPS))
    return Settings(
        quick=args.quick,
        size=size,
        mem_sizes=(size, 4 * size),
        small_count=args.small_count or (500 if args.quick else 2000),
        small_size=4 * 1024,
        inflight=64,
        rounds=args.rounds or (2 if args.quick else 3),
        part_size=8 * MiB,
        concurrency=4,
        groups=groups,
        output_dir=args.output.resolve().parent,
    )


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": GiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    import signal

    # SIGTERM unwinds like Ctrl-C, so nginx, the servers and the temp files are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="128 MiB instead of 1 GiB, 500 small puts, 512 MiB memory run")
    parser.add_argument("--size", type=parse_size, default=None, help="large file size")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison")
    parser.add_argument("--small-count", type=int, default=None, help="number of small puts")
    parser.add_argument("--only", default="", help="comma-separated groups: " + ",".join(GROUPS))
    parser.add_argument("--tmpdir", default=None, help="where to put the test files")
    parser.add_argument("--emulator-data-dir", type=Path, default=None,
                        help="where the emulator stores objects (default: beside the test "
                        "files; e.g. /dev/shm to take the disk out of the comparison)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md",
                        help="markdown report (default benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    s = settings_from(args)
    started = time.perf_counter()
    report = Report(settings=s, info=machine_info())
    print("machine: " + ", ".join(f"{k}={v}" for k, v in list(report.info.items())[:8]))
    with tempfile.TemporaryDirectory(prefix="bench-upload-", dir=args.tmpdir) as tmp:
        scratch = Path(tmp)
        big = make_file(scratch / f"src-{s.size}.bin", s.size)
        sink_groups = [g for g in s.groups if g in ("sink", "small", "memory", "scaling",
                                                     "profile", "ablations")]
        if sink_groups and find_nginx() is None:
            msg = ("nginx is not installed: SKIPPING the nginx-sink benchmarks ("
                   + ", ".join(sink_groups) + "). Install it with `apt-get install nginx-light`.")
            print("\n" + msg, flush=True)
            report.skipped.append(msg)
        elif sink_groups:
            with NginxSink() as sink:
                env = Env(sink.endpoint, SINK_KEYS, sink.cpu_seconds, scratch)
                print(f"nginx sink on {sink.endpoint} (pid {sink.pid})", flush=True)
                def memory() -> None:
                    files = {size: make_file(scratch / f"src-{size}.bin", size)
                             for size in s.mem_sizes}
                    try:
                        sink_memory(report, s, env, files)
                    finally:
                        for size, path in files.items():
                            if size != s.size:
                                path.unlink()

                groups: dict[str, Callable[[], None]] = {
                    "sink": lambda: sink_large(report, s, env, big),
                    "small": lambda: sink_small(report, s, env),
                    "memory": memory,
                    "scaling": lambda: sink_scaling(report, s, env, big),
                    "profile": lambda: profile_group(report, s, env, big),
                    "ablations": lambda: ablations_group(report, s, env, big),
                }
                for name, fn in groups.items():
                    if name in s.groups:
                        _guarded(report, name, fn)
        if "emulator" in s.groups:
            _guarded(report, "emulator", lambda: emulator_group(
                report, s, scratch, big, args.emulator_data_dir))
    header = ["target", "measured", "limit", "status", "detail"]
    report.add("Targets", markdown_table(header, [t.row() for t in report.targets]),
               text_table(header, [t.row() for t in report.targets]))
    report.sections.pop()  # the targets table is written at the top of RESULTS.md
    write_results(report, args.output)
    print(f"\nwrote {args.output}" + (f" and {report.scaling_png}" if report.scaling_png
                                       else "") + f" in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
