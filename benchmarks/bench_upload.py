"""Upload benchmarks: the SDK's one httpx engine against ``curl -T`` and the official SDKs.

Run with ``python -m benchmarks`` (``nox -s bench``); ``--quick`` shrinks every size (and
runs fewer rounds) so the whole run is a smoke test of a few minutes. Results are printed and
written to ``benchmarks/RESULTS.md`` (with ``benchmarks/scaling.png``).

Every SDK request goes through one ``httpx.AsyncClient``: the default engine is httpx's own
transport (httpcore + h11), ``http_engine="aiohttp"`` puts aiohttp under it. Both are
measured; the targets are for the default engine unless a row says otherwise.

Groups (``--only`` picks some):

* ``sink``: one large file (1 GiB; quick: 128 MiB) into an OSS-shaped nginx sink over plain
  HTTP (:mod:`benchmarks.nginx_sink`, which reads every body whole before it answers):
  ``curl -T``, our ``put_object`` and ``resumable_upload`` (default engine, aiohttp engine,
  sync facade), ``oss2.resumable_upload`` and the v2 ``Uploader`` with CRC-64 on and off,
  interleaved in rounds;
* ``tls``: the same file into the same sink over TLS (``curl --cacert``; our SDK trusting the
  sink's CA through ``SSL_CERT_FILE``, the peers through ``REQUESTS_CA_BUNDLE``);
* ``small``: 2,000 (quick: 500) 4 KiB objects, 64 in flight on one ``AsyncClient`` (both
  engines), the sync facade, oss2 and the v2 SDK with 64 threads;
* ``memory``: peak RSS of a resumable upload with 8 MiB parts, concurrency 8, for 1 GiB and
  4 GiB (quick: 128 and 512 MiB);
* ``scaling``: resumable upload wall time for concurrency 1/2/4/8/16 x part size 1/8/32 MiB;
* ``profile``: where the client's time goes (py-spy when it can attach, else cProfile) on
  ``put_object`` (plain HTTP), ``resumable_upload`` over TLS and the small puts;
* ``ablations``: each tuning of the SDK undone (:mod:`benchmarks._patches`, monkeypatched
  into the worker) or uvloop swapped in, against the shipped code, interleaved;
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
    REPO,
    Case,
    GiB,
    Measured,
    MiB,
    Run,
    Target,
    check_snapshot,
    cpu_accounting,
    fmt,
    have_curl,
    machine_info,
    make_file,
    markdown_table,
    other_load,
    ratio,
    results_rows,
    run_curl,
    run_rounds,
    run_worker,
    source_state,
    take_snapshot,
    text_table,
)
from ._servers import discard_process, emulator_process
from .nginx_sink import NginxSink, find_nginx

HERE = Path(__file__).resolve().parent
BUCKET = "bench"
REGION = "cn-hangzhou"
#: Dummy keys: the sink checks no signature. Never printed.
SINK_KEYS = ("bench-access-key-id", "bench-access-key-secret")
GROUPS = ("sink", "tls", "small", "memory", "scaling", "profile", "ablations", "emulator")
SINK_GROUPS = ("sink", "tls", "small", "memory", "scaling", "profile", "ablations")
MEM_PARTS, MEM_PART_SIZE, MEM_OVERHEAD = 8, 8 * MiB, 80 * MiB
AIOHTTP = {"http_engine": "aiohttp"}

SINK_PLAIN = ("nginx sink over plain HTTP (it reads each request body whole before it "
              "answers)")
SINK_TLS = ("nginx sink over TLS (TLS 1.3, self-signed certificate for 127.0.0.1; nginx "
            "decrypts and reads each request body whole before it answers)")


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
    targets: list[Target] = field(default_factory=list)  # the floors
    checks: list[Target] = field(default_factory=list)  # other comparisons, informational
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, markdown)
    skipped: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Measured]] = field(default_factory=dict)  # by group
    notes: dict[str, str] = field(default_factory=dict)
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
    """Where the clients upload to: endpoint, credentials, server CPU probe, scratch dir.

    ``ca_file``: the CA of a TLS endpoint. curl gets it with ``--cacert``; the workers get it
    through their environment, as a user would set it: ``SSL_CERT_FILE`` (httpx, and our
    aiohttp engine, which builds its context with httpx's ``create_ssl_context``) and
    ``REQUESTS_CA_BUNDLE`` (requests, under oss2 and the v2 SDK). Verification stays on.
    """

    def __init__(self, endpoint: str, keys: tuple[str, str], server_cpu: Callable[[], float],
                 scratch: Path, key: str | None = None, ca_file: str | None = None,
                 server_log: Callable[[], str] | None = None) -> None:
        self.endpoint = endpoint
        self.server_log = server_log
        self.keys = keys
        self.server_cpu = server_cpu
        self.scratch = scratch
        #: one object key for every run (each overwrites the last), else a fresh key per run
        self.key = key
        self.ca_file = ca_file
        self.worker_env: dict[str, str] | None = (
            {"SSL_CERT_FILE": ca_file, "REQUESTS_CA_BUNDLE": ca_file} if ca_file else None)
        (scratch / "ckpt").mkdir(parents=True, exist_ok=True)

    def spec(self, client: str, op: str, **kw: Any) -> dict[str, Any]:
        return {
            "client": client, "op": op, "endpoint": self.endpoint, "bucket": BUCKET,
            "access_key_id": self.keys[0], "access_key_secret": self.keys[1],
            "region": REGION, "checkpoint_dir": str(self.scratch / "ckpt"), **kw,
        }

    def run(self, spec: Mapping[str, Any], **kw: Any) -> Run:
        try:
            return run_worker(spec, server_cpu=self.server_cpu, env=self.worker_env, **kw)
        except RuntimeError as exc:
            self.explain(exc)
            raise

    def explain(self, exc: BaseException) -> None:
        """Print a failed run's output and the server's log (the report keeps one line)."""
        _log(f"    {str(exc).strip()[-2500:]}")
        tail = self.server_log() if self.server_log is not None else ""
        if tail.strip():
            _log("    server log (end):\n" + tail)

    def worker(self, name: str, client: str, op: str, *, bytes_: int = 0, objects: int = 0,
               note: str = "", **kw: Any) -> Case:
        def fn() -> Run:
            return self.run(self.spec(client, op, key=self.key or _key(client), **kw))

        return Case(name, fn, bytes=bytes_, objects=objects, note=note)

    def curl(self, name: str, path: Path, url: Callable[[], str] | None = None,
             note: str = "") -> Case:
        size = path.stat().st_size
        url = url or (lambda: f"{self.endpoint}/{BUCKET}/{_key('curl')}")

        def fn() -> Run:
            try:
                return run_curl(url(), str(path), server_cpu=self.server_cpu,
                                expect_bytes=size, cacert=self.ca_file)
            except RuntimeError as exc:
                self.explain(exc)
                raise

        return Case(name, fn, bytes=size, note=note)


def _table(report: Report, title: str, results: Mapping[str, Measured], reference: str | None,
           intro: str = "") -> None:
    header, rows = results_rows(results, reference)
    md = (intro + "\n\n" if intro else "") + markdown_table(header, rows)
    report.add(title, md, text_table(header, rows))


def _per_gib(m: Measured) -> float | None:
    return m.cpu / (m.case.bytes / GiB) if m.case.bytes else None


# --------------------------------------------------------------------------- sink groups

CURL = "curl -T"
CURL_TLS = "curl -T --cacert"
PUT = "sdk put_object, default engine (httpx)"
PUT_AIO = "sdk put_object, aiohttp engine"
PUT_SYNC = "sdk put_object, sync facade (default engine)"
RES = "sdk resumable_upload, default engine (httpx)"
RES_AIO = "sdk resumable_upload, aiohttp engine"
RES_HEAP = "sdk resumable_upload, default engine, heap kept (keep_heap)"
RES_SYNC = "sdk resumable_upload, sync facade (default engine)"
OSS2_ON, OSS2_OFF = "oss2.resumable_upload, CRC on", "oss2.resumable_upload, CRC off"
V2_ON, V2_OFF = "v2 Uploader, CRC on", "v2 Uploader, CRC off"

_TABLE_NOTE = (
    "Median of the rounds; `x ref` columns are medians of per-round ratios to {ref} of the "
    "same bytes (client wall time and client CPU: user + system of the whole client "
    "process). `CPU s/GiB` is client CPU per GiB sent; `server CPU` is nginx's. Our SDK "
    "always computes CRC-64; the sink sends no `x-oss-hash-crc64ecma`, so nobody compares it."
)


def sink_large(report: Report, s: Settings, env: Env, big: Path) -> None:
    size = big.stat().st_size
    ps, cc = s.part_size, s.concurrency
    common: dict[str, Any] = {"file": str(big), "part_size": ps, "concurrency": cc}
    parts = f"{ps // MiB} MiB x {cc}"
    cases: list[Case] = []
    if have_curl():
        cases.append(env.curl(CURL, big, note="reference"))
    cases += [
        env.worker(PUT, "sdk", "put", bytes_=size, file=str(big), note="CRC-64 on"),
        env.worker(PUT_AIO, "sdk", "put", bytes_=size, file=str(big), **AIOHTTP),
        env.worker(PUT_SYNC, "sdk_sync", "put", bytes_=size, file=str(big)),
        env.worker(RES, "sdk", "resumable", bytes_=size, **common,
                   note=f"{parts}, checkpoint + CRC"),
        env.worker(RES_AIO, "sdk", "resumable", bytes_=size, **common, **AIOHTTP,
                   note=parts),
        env.worker(RES_SYNC, "sdk_sync", "resumable", bytes_=size, **common, note=parts),
        env.worker(OSS2_ON, "oss2", "resumable", bytes_=size, crc=True, **common,
                   note=f"{parts} (num_threads={cc})"),
        env.worker(OSS2_OFF, "oss2", "resumable", bytes_=size, crc=False, **common,
                   note="enable_crc=False"),
        env.worker(V2_ON, "v2", "resumable", bytes_=size, crc=True, **common,
                   note=f"{parts} (parallel_num={cc}), checkpoint on"),
        env.worker(V2_OFF, "v2", "resumable", bytes_=size, crc=False, **common,
                   note="disable_upload_crc64_check"),
    ]
    _log(f"\n[sink] {_size_label(size)} from a file into nginx (plain HTTP), {s.rounds} "
         "interleaved rounds")
    results = run_rounds(cases, s.rounds, log=_log)
    report.results["sink"] = results
    ref = CURL if CURL in results else None
    _table(report, f"Large upload ({_size_label(size)}), plain HTTP", results, ref,
           f"One {_size_label(size)} file from the page cache into the {SINK_PLAIN}, "
           f"{s.rounds} interleaved rounds. " + _TABLE_NOTE.format(ref="`curl -T`"))
    label = _size_label(size)
    t, c = report.targets, report.checks
    for peer, engine, name in ((OSS2_ON, RES, "oss2"), (V2_ON, RES, "v2")):
        t.append(Target(f"resumable_upload {label}, CRC on: how much faster than {name}, "
                        "CRC on (wall, plain HTTP)", ratio(results, peer, engine), ">=", 4.0,
                        detail=f"{parts}, checkpoint + CRC; {peer} / ours"))
    t.append(Target(f"put_object {label} vs curl -T (wall, plain HTTP)",
                    ratio(results, PUT, CURL), "<=", 1.5,
                    detail=_wall_detail(results, PUT, CURL)))
    for peer, name in ((OSS2_ON, "oss2"), (V2_ON, "v2")):
        c.append(Target(f"aiohttp engine: resumable_upload {label} faster than {name}, "
                        "CRC on (wall)", ratio(results, peer, RES_AIO), ">=", 4.0,
                        informational=True))
    c.append(Target(f"aiohttp engine: put_object {label} vs curl -T (wall)",
                    ratio(results, PUT_AIO, CURL), "<=", 1.5, informational=True,
                    detail=_wall_detail(results, PUT_AIO, CURL)))
    c.append(Target(f"resumable_upload {label} vs curl -T (wall, plain HTTP)",
                    ratio(results, RES, CURL), "<=", 1.6, informational=True,
                    detail=_wall_detail(results, RES, CURL)))
    for peer, name in ((OSS2_OFF, "oss2"), (V2_OFF, "v2")):
        c.append(Target(f"resumable_upload faster than {name} with CRC off (wall)",
                        ratio(results, peer, RES), ">", 1.0, informational=True))
    c.append(Target("sync facade / async, resumable_upload (wall)",
                    ratio(results, RES_SYNC, RES), "<=", 1.1, informational=True))
    c.append(Target("sync facade / async, put_object (wall)",
                    ratio(results, PUT_SYNC, PUT), "<=", 1.1, informational=True))


def warm_sink(env: Env, tls_env: Env, big: Path) -> None:
    """Upload the large file once over each listener, unrecorded.

    A fresh nginx has to fault in the memory it buffers a body in (up to 1.1 GB); its
    first large upload measured 3-4x the sink CPU of later ones (3.4 s instead of 0.7 s of
    wall for curl, 1 GiB). With glibc keeping freed memory, later requests reuse it; the
    warm-up keeps that cost out of whichever case happens to run first.
    """
    started = time.perf_counter()
    for where in (env, tls_env):
        if have_curl():
            where.curl("warm-up", big).fn()
        else:
            where.worker("warm-up", "sdk", "put", file=str(big)).fn()
    _log(f"sink warmed up ({_size_label(big.stat().st_size)} over plain HTTP and TLS, "
         f"{time.perf_counter() - started:.1f} s)")


def _wall_detail(results: Mapping[str, Measured], a: str, b: str) -> str:
    if a not in results or b not in results:
        return ""
    return f"{results[a].wall:.3f} s vs {results[b].wall:.3f} s (medians)"


def sink_tls(report: Report, s: Settings, env: Env, big: Path) -> None:
    size = big.stat().st_size
    ps, cc = s.part_size, s.concurrency
    common: dict[str, Any] = {"file": str(big), "part_size": ps, "concurrency": cc}
    parts = f"{ps // MiB} MiB x {cc}"
    cases: list[Case] = []
    if have_curl():
        cases.append(env.curl(CURL_TLS, big, note="reference (`--cacert`)"))
    cases += [
        env.worker(PUT, "sdk", "put", bytes_=size, file=str(big), note="SSL_CERT_FILE"),
        env.worker(PUT_AIO, "sdk", "put", bytes_=size, file=str(big), **AIOHTTP,
                   note="SSL_CERT_FILE"),
        env.worker(RES, "sdk", "resumable", bytes_=size, **common,
                   note=f"{parts}, checkpoint + CRC; SSL_CERT_FILE"),
        env.worker(RES_AIO, "sdk", "resumable", bytes_=size, **common, **AIOHTTP,
                   note=f"{parts}; SSL_CERT_FILE"),
        env.worker(RES_HEAP, "sdk", "resumable", bytes_=size, **common, keep_heap=True,
                   note=f"{parts}; glibc keeps freed heap (keep_heap(), as the "
                   "oss-callback upload command runs)"),
        env.worker(OSS2_ON, "oss2", "resumable", bytes_=size, crc=True, **common,
                   note=f"{parts} (num_threads={cc}); REQUESTS_CA_BUNDLE"),
        env.worker(V2_ON, "v2", "resumable", bytes_=size, crc=True, **common,
                   note=f"{parts} (parallel_num={cc}); REQUESTS_CA_BUNDLE"),
    ]
    _log(f"\n[tls] {_size_label(size)} from a file into nginx over TLS, {s.rounds} "
         "interleaved rounds")
    results = run_rounds(cases, s.rounds, log=_log)
    report.results["tls"] = results
    ref = CURL_TLS if CURL_TLS in results else None
    _table(report, f"Large upload ({_size_label(size)}) over TLS", results, ref,
           f"One {_size_label(size)} file into the {SINK_TLS}, {s.rounds} interleaved "
           "rounds. Every client verifies the certificate: curl with `--cacert`, our SDK "
           "through `SSL_CERT_FILE` in its environment (how a user trusts a private CA; "
           "`http_client=httpx.AsyncClient(verify=ctx)` would do the same), oss2 and the v2 "
           "SDK (both on requests) through `REQUESTS_CA_BUNDLE`. "
           + _TABLE_NOTE.format(ref="`curl -T --cacert`"))
    label = _size_label(size)
    for name, what in ((PUT, "put_object"), (RES, "resumable_upload")):
        m = results.get(name)
        report.targets.append(Target(
            f"TLS: {what} {label} client CPU per GiB vs curl's", ratio(results, name, CURL_TLS,
                                                                        "cpu"),
            "<=", 1.5, detail=(f"{fmt(_per_gib(m))} vs {fmt(_per_gib(results[CURL_TLS]))} "
                               "CPU s/GiB" if m and CURL_TLS in results else "")))
    m = results.get(RES_HEAP)
    report.checks.append(Target(
        "TLS: resumable_upload client CPU per GiB vs curl's, glibc keeping freed heap "
        "(keep_heap(): the oss-callback upload command; any process: MALLOC_MMAP_THRESHOLD_ "
        "and MALLOC_TRIM_THRESHOLD_)", ratio(results, RES_HEAP, CURL_TLS, "cpu"), "<=", 1.5,
        informational=True, detail=f"{fmt(_per_gib(m))} CPU s/GiB" if m else ""))
    for name, what in ((PUT_AIO, "put_object"), (RES_AIO, "resumable_upload")):
        m = results.get(name)
        report.checks.append(Target(
            f"aiohttp engine, TLS: {what} client CPU per GiB vs curl's",
            ratio(results, name, CURL_TLS, "cpu"), "<=", 1.5, informational=True,
            detail=f"{fmt(_per_gib(m))} CPU s/GiB" if m else ""))
    for peer, name in ((OSS2_ON, "oss2"), (V2_ON, "v2")):
        report.checks.append(Target(
            f"TLS: resumable_upload faster than {name}, CRC on (wall)",
            ratio(results, peer, RES), ">=", 4.0, informational=True))


SMALL = "sdk AsyncClient, default engine (httpx), {n} in flight"
SMALL_AIO = "sdk AsyncClient, aiohttp engine, {n} in flight"
SMALL_SYNC = "sdk sync facade (default engine), {n} threads"
SMALL_OSS2 = "oss2, {n} threads"
SMALL_V2 = "v2 Client, {n} threads"


def _small_names(s: Settings) -> list[str]:
    return [x.format(n=s.inflight) for x in (SMALL, SMALL_AIO, SMALL_SYNC, SMALL_OSS2,
                                             SMALL_V2)]


def sink_small(report: Report, s: Settings, env: Env) -> None:
    n, count, size = s.inflight, s.small_count, s.small_size
    common: dict[str, Any] = {"count": count, "object_size": size, "inflight": n}
    names = _small_names(s)
    cases = [
        env.worker(names[0], "sdk", "small", objects=count,
                   note="one AsyncClient, default 8 connections", **common),
        env.worker(names[1], "sdk", "small", objects=count, **AIOHTTP,
                   note="one AsyncClient, default 8 connections", **common),
        env.worker(names[2], "sdk_sync", "small", objects=count,
                   note="one Client, default 8 connections", **common),
        env.worker(names[3], "oss2", "small", objects=count,
                   note="one Bucket, pool_size=" + str(n), **common),
        env.worker(names[4], "v2", "small", objects=count, note="one Client", **common),
    ]
    _log(f"\n[small] {count} x {size // 1024} KiB puts, {n} in flight, {s.rounds} rounds")
    results = run_rounds(cases, s.rounds, log=_log)
    report.results["small"] = results
    _table(report, f"Small objects ({count} x {size // 1024} KiB PutObject, {n} in flight)",
           results, names[3],
           f"{count} PutObjects of {size // 1024} KiB (bytes in memory) into the "
           f"{SINK_PLAIN}, {n} in flight ({n} tasks on one AsyncClient, or {n} threads), "
           f"{s.rounds} interleaved rounds. `x ref` is relative to oss2 (lower wall is "
           "better); `obj/s` = objects / median wall.")
    oss2 = results[names[3]]
    for name, floor, label in ((names[0], 1.5, "default engine"),
                               (names[1], 3.0, "aiohttp engine")):
        report.targets.append(Target(
            f"small puts, {label}: objects/s vs oss2 with {n} threads",
            ratio(results, names[3], name), ">=", floor,
            detail=f"{fmt(count / results[name].wall, '.0f')} vs "
            f"{fmt(count / oss2.wall, '.0f')} objects/s"))
    report.checks.append(Target(
        f"small puts, sync facade ({n} threads): objects/s vs oss2",
        ratio(results, names[3], names[2]), ">=", 1.0, informational=True,
        detail=f"{fmt(count / results[names[2]].wall, '.0f')} objects/s"))


def sink_memory(report: Report, s: Settings, env: Env, files: Mapping[int, Path]) -> None:
    limit = (MEM_PARTS * MEM_PART_SIZE + MEM_OVERHEAD) / MiB
    cases = [
        env.worker(f"resumable {_size_label(size)}, 8 MiB x 8", "sdk", "resumable",
                   bytes_=size, file=str(path), part_size=MEM_PART_SIZE,
                   concurrency=MEM_PARTS, max_connections=MEM_PARTS,
                   note="default engine, max_connections=8")
        for size, path in sorted(files.items())
    ]
    _log("\n[memory] peak RSS of resumable uploads, 8 MiB parts, concurrency 8")
    results = run_rounds(cases, 1, log=_log)
    report.results["memory"] = results
    _table(report, "Memory (peak RSS of the client process)", results, None,
           f"`resumable_upload` (default engine) of files of the sizes shown into the "
           f"{SINK_PLAIN}, 8 MiB parts, concurrency 8, `max_connections=8`, one run each. "
           f"Limit: 8 x 8 MiB + 80 MiB = {limit:.0f} MiB (peak RSS is the process's `VmHWM`: "
           "it includes the interpreter and imports).")
    rss = {size: m.rss for size, m in zip(sorted(files), results.values(), strict=True)}
    sizes = sorted(rss)
    for size in sizes:
        target = Target(f"peak RSS, {_size_label(size)} resumable, 8 MiB x 8", rss[size],
                        "<=", limit, unit=" MiB")
        (report.targets if size == sizes[-1] else report.checks).append(target)
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
        cases.append(env.curl(CURL, big))
    grid: dict[tuple[int, int], str] = {}
    for ps in s.scaling_parts:
        for cc in s.scaling_concurrency:
            name = f"{ps // MiB} MiB parts, concurrency {cc}"
            grid[(ps, cc)] = name
            cases.append(env.worker(name, "sdk", "resumable", bytes_=size, file=str(big),
                                    part_size=ps, concurrency=cc,
                                    max_connections=max(8, cc)))
    _log(f"\n[scaling] {_size_label(size)} resumable uploads into nginx")
    results = run_rounds(cases, 1, log=_log)
    report.results["scaling"] = results
    header = ["part size \\ concurrency", *(str(c) for c in s.scaling_concurrency)]
    rows_wall, rows_cpu = [], []
    for ps in s.scaling_parts:
        walls = [results[grid[(ps, cc)]] for cc in s.scaling_concurrency]
        rows_wall.append([f"{ps // MiB} MiB"] + [
            f"{m.wall:.2f} s ({size / MiB / m.wall:.0f} MiB/s)" for m in walls])
        rows_cpu.append([f"{ps // MiB} MiB"] + [f"{m.cpu:.2f}" for m in walls])
    curl_note = (f"`curl -T` of the same bytes: {results[CURL].wall:.2f} s, "
                 f"{results[CURL].cpu:.2f} CPU s." if CURL in results else "")
    md = (f"Wall time of `resumable_upload` ({_size_label(size)}, default engine, checkpoint + "
          f"CRC, `max_connections` = max(8, concurrency), one run each) into the "
          f"{SINK_PLAIN}. {curl_note}\n\n" + markdown_table(header, rows_wall)
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
    fig.suptitle(f"resumable_upload of {_size_label(size)} (default httpx engine) into an "
                 f"nginx sink that reads every body, plain HTTP ({os.cpu_count()} CPUs)")
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
#: Frames whose inclusive time is listed: the SDK and the HTTP stack under it.
_STACK = ("oss_callback/", "httpcore/", "httpx/", "anyio/", "h11/", "aiohttp/",
          "httpx_aiohttp/", "ssl.py", "sslproto.py")


def _frame_module(frame: str) -> str:
    """``oss_callback`` for ``f (oss_callback/_body.py:12)``, ``ssl`` for ``f (ssl.py:3)``."""
    inner = frame.rpartition(" (")[2].rstrip(")")
    path = inner.rpartition(":")[0] or inner
    path = path.replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):  # a stdlib file with its full path
        path = path.rsplit("/", 1)[-1]
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def summarize_py_spy(raw: Path, top: int = 14) -> str:
    """Self time by module and by function, inclusive time, from py-spy's raw output."""
    leaf: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
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
        modules[_frame_module(frames[-1])] += n
        for f in set(frames):
            if any(m in f for m in _STACK):
                incl[f] += n
    if not busy:
        return "(no busy samples)"
    lines = [f"busy samples: {busy} (idle/waiting samples left out: {idle}; imports: {imports})",
             "", "self time by module (leaf frame's package or stdlib module; time in C "
             "code counts for the Python function that called it), % of busy samples:"]
    lines += [f"  {n / busy * 100:5.1f}%  {m}" for m, n in modules.most_common(10)]
    lines += ["", "self time (leaf frames), % of busy samples:"]
    lines += [f"  {n / busy * 100:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    lines += ["", "inclusive time in oss_callback/httpx/httpcore/h11/anyio/aiohttp/ssl frames:"]
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


def profile_group(report: Report, s: Settings, env: Env, tls_env: Env, big: Path) -> None:
    size = big.stat().st_size
    label = _size_label(size)
    jobs: list[tuple[str, Env, dict[str, Any]]] = [
        (f"put_object {label}, plain HTTP", env,
         env.spec("sdk", "put", key=_key("prof"), file=str(big))),
        (f"resumable_upload {label} over TLS, {s.part_size // MiB} MiB x {s.concurrency}",
         tls_env, tls_env.spec("sdk", "resumable", key=_key("prof"), file=str(big),
                               part_size=s.part_size, concurrency=s.concurrency)),
        (f"{s.small_count} small puts, {s.inflight} in flight, plain HTTP", env,
         env.spec("sdk", "small", key=_key("prof"), count=s.small_count,
                  object_size=s.small_size, inflight=s.inflight)),
    ]
    spy = _py_spy()
    parts: list[str] = []
    summary: list[str] = []
    _log("\n[profile] " + ("py-spy + cProfile" if spy else "cProfile (py-spy not found)"))
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        for i, (title, where, spec) in enumerate(jobs):
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

                run = where.run({**spec, "key": _key("prof")}, on_ready=attach)
                _, err = recorder[0].communicate(timeout=60)
                if recorder[0].returncode == 0 and raw.exists():
                    text = summarize_py_spy(raw)
                    body.append(f"py-spy (all threads, 250 Hz, the operation only; "
                                f"{run.wall:.2f} s wall, {run.cpu:.2f} s client CPU = "
                                f"{run.extra.get('user', 0):.2f} user + "
                                f"{run.extra.get('sys', 0):.2f} system, under the "
                                "sampler):\n" + text)
                    summary.append(f"* {title}: client CPU {run.cpu:.2f} s = "
                                   f"{run.extra.get('user', 0):.2f} user + "
                                   f"{run.extra.get('sys', 0):.2f} system (kernel: socket "
                                   "writes, file reads); busy samples by module: "
                                   + _top_modules(text))
                else:
                    body.append("py-spy could not record (it needs ptrace permission): "
                                + err.strip()[-300:])
            prof = Path(tmp) / f"prof{i}.prof"
            run = where.run({**spec, "key": _key("prof"), "profile": str(prof)})
            body.append(f"cProfile (event-loop thread only; {run.wall:.2f} s wall under the "
                        f"profiler), top by own time:\n" + summarize_cprofile(prof))
            parts.append(f"### {title}\n\n```\n" + "\n\n".join(body) + "\n```")
            _log(f"  profiled {title}")
    intro = ("The client process (default engine, asyncio loop) sampled while it uploads into "
             "the nginx sink (plain HTTP, or TLS where the title says so; the sink reads each "
             "body whole). py-spy samples every thread of the worker (file reads and CRC-64 "
             "run in worker threads); cProfile sees the event-loop thread only.")
    if summary:
        intro += "\n\nWhere the client's time goes:\n\n" + "\n".join(summary)
        report.notes["profile"] = "\n".join(summary)
    report.add("Profiles (client side)", intro + "\n\n" + "\n\n".join(parts))


def _top_modules(summary: str, n: int = 5) -> str:
    """``oss_callback 31%, ssl 22%, ...`` from :func:`summarize_py_spy`'s text."""
    lines = summary.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("self time by module"))
    except StopIteration:
        return summary.splitlines()[0] if summary else ""
    out = []
    for ln in lines[start + 1:start + 1 + n]:
        pct, _, mod = ln.strip().partition("%")
        if not mod.strip():
            break
        out.append(f"{mod.strip()} {pct.strip()}%")
    return ", ".join(out)


# --------------------------------------------------------------------------- ablations

#: (label, spec changes, what it undoes) per case kind; the first row of each is the shipped
#: code. ``patches`` are :mod:`benchmarks._patches`; ``loop``/``http_engine`` go to the worker.
Rows = list[tuple[str, dict[str, Any], str]]
SHIPPED = "as shipped"
ABLATION_RESUMABLE: Rows = [
    (SHIPPED, {}, "default engine, asyncio loop"),
    ("checkpoint after every part", {"patches": ["checkpoint_every_part"]},
     "CHECKPOINT_INTERVAL = 0"),
    ("1 MiB file reads", {"patches": ["file_chunk_1m"]}, "FILE_CHUNK = 1 MiB"),
    ("on uvloop", {"loop": "uvloop"}, "anyio.run(..., use_uvloop=True)"),
]
ABLATION_PUT: Rows = [
    (SHIPPED, {}, "default engine, asyncio loop"),
    ("1 MiB file reads", {"patches": ["file_chunk_1m"]}, "FILE_CHUNK = 1 MiB"),
    ("on uvloop", {"loop": "uvloop"}, "anyio.run(..., use_uvloop=True)"),
]
ABLATION_TLS_PUT: Rows = [
    (SHIPPED, {}, "default engine, asyncio loop"),
    ("1 MiB file reads", {"patches": ["file_chunk_1m"]}, "FILE_CHUNK = 1 MiB"),
    ("on uvloop", {"loop": "uvloop"}, "anyio.run(..., use_uvloop=True)"),
    ("aiohttp engine", AIOHTTP, "http_engine='aiohttp'"),
    ("aiohttp engine on uvloop", {**AIOHTTP, "loop": "uvloop"}, "both"),
]
ABLATION_TLS_RESUMABLE: Rows = [
    (SHIPPED, {}, "default engine, asyncio loop"),
    ("on uvloop", {"loop": "uvloop"}, "anyio.run(..., use_uvloop=True)"),
]
ABLATION_SMALL: Rows = [
    (SHIPPED, {}, "default engine: 8 connections, gate, no cookies, asyncio loop"),
    ("no request gate", {"patches": ["no_gate"]}, "client._session.gate = None"),
    ("64 connections", {"patches": ["pool_64"]}, "max_connections=64 (gate of 64)"),
    ("cookies kept", {"patches": ["keep_cookies"]}, "httpx's default cookie jar"),
    ("on uvloop", {"loop": "uvloop"}, "anyio.run(..., use_uvloop=True)"),
    ("aiohttp engine", AIOHTTP, "http_engine='aiohttp' (8 connections)"),
    ("aiohttp engine, 64 connections", {**AIOHTTP, "patches": ["pool_64"]},
     "http_engine='aiohttp', max_connections=64"),
    ("aiohttp engine on uvloop", {**AIOHTTP, "loop": "uvloop"}, "both"),
]


def _ablation_table(report: Report, title: str, intro: str, results: Mapping[str, Measured],
                    base: Mapping[str, str], curl: str | None) -> None:
    header, rows = results_rows(results, None)
    for row, name in zip(rows, results, strict=True):
        if name == curl:
            row[8] = row[9] = ""
            continue
        row[8] = fmt(ratio(results, name, base[name]), ".2f", "x")
        row[9] = fmt(ratio(results, name, base[name], "cpu"), ".2f", "x")
        if curl is not None and curl in results:
            row[10] = (row[10] + "; " if row[10] else "") + (
                f"{fmt(ratio(results, name, curl), '.2f')}x curl wall, "
                f"{fmt(ratio(results, name, curl, 'cpu'), '.2f')}x curl CPU")
    header[8:10] = ["x shipped wall", "x shipped CPU"]
    report.add(title, intro + "\n\n" + markdown_table(header, rows), text_table(header, rows))


def ablations_group(report: Report, s: Settings, env: Env, tls_env: Env, big: Path) -> None:
    """Each tuning undone in the worker (or uvloop swapped in), against the shipped code."""
    size = big.stat().st_size
    label = _size_label(size)
    base: dict[str, str] = {}

    def cases(where: Env, kind: str, op: str, rows: Rows, **kw: Any) -> list[Case]:
        out = []
        for row_label, change, note in rows:
            name = f"{kind}: {row_label}"
            base[name] = f"{kind}: {SHIPPED}"
            out.append(where.worker(name, "sdk", op, note=note, **change, **kw))
        return out

    large_kw: dict[str, Any] = {"bytes_": size, "file": str(big)}
    parts_kw: dict[str, Any] = {"part_size": s.part_size, "concurrency": s.concurrency}
    plain = (cases(env, "resumable", "resumable", ABLATION_RESUMABLE, **large_kw, **parts_kw)
             + cases(env, "put", "put", ABLATION_PUT, **large_kw))
    tls = (cases(tls_env, "resumable over TLS", "resumable", ABLATION_TLS_RESUMABLE,
                 **large_kw, **parts_kw)
           + cases(tls_env, "put over TLS", "put", ABLATION_TLS_PUT, **large_kw))
    if have_curl():
        plain.append(env.curl(CURL, big, note="reference"))
        tls.append(tls_env.curl(CURL_TLS, big, note="reference"))
    small = cases(env, "small", "small", ABLATION_SMALL, objects=s.small_count,
                  count=s.small_count, object_size=s.small_size, inflight=s.inflight)
    _log(f"\n[ablations] tunings undone, {s.rounds} interleaved rounds")
    r_plain = run_rounds(plain, s.rounds, log=_log)
    r_tls = run_rounds(tls, s.rounds, log=_log)
    r_small = run_rounds(small, s.rounds, log=_log)
    report.results["ablations"] = {**r_plain, **r_tls, **r_small}
    how = ("Each tuning is undone in the worker by `benchmarks/_patches.py` (oss_callback "
           "is not edited), or the worker runs on uvloop or the aiohttp engine; `x shipped` "
           "ratios are per-round ratios to the shipped code (default engine, asyncio loop) "
           f"in the same interleaved rounds ({s.rounds}): above 1.00x, the shipped choice "
           "is faster / cheaper.")
    _ablation_table(report, "Ablations: large uploads, plain HTTP",
                    f"{label} from a file into the {SINK_PLAIN}; resumable: "
                    f"{s.part_size // MiB} MiB x {s.concurrency}. " + how,
                    r_plain, base, CURL)
    _ablation_table(report, "Ablations: large uploads over TLS",
                    f"{label} from a file into the {SINK_TLS}; resumable: "
                    f"{s.part_size // MiB} MiB x {s.concurrency}. " + how,
                    r_tls, base, CURL_TLS)
    _ablation_table(report, "Ablations: small puts",
                    f"{s.small_count} x {s.small_size // 1024} KiB PutObject, {s.inflight} "
                    f"in flight on one AsyncClient, into the {SINK_PLAIN}. " + how,
                    r_small, base, None)


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
EMU_ROUNDS = 3  # the emulator cases are slow (MD5 on the server) and steady
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
        rounds = min(s.rounds, EMU_ROUNDS)
        _log(f"\n[emulator] {_size_label(size)} end to end, a warm-up and {rounds} rounds")
        try:
            results = run_rounds(cases, rounds, log=_log, warmup=True)
        except Exception:
            discard.check_alive()
            emu.check_alive()
            fast.check_alive()
            raise
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(fast_dir, ignore_errors=True)
    report.results["emulator"] = results
    _table(report, f"Emulator end to end ({_size_label(size)})", results, EMU_CURL,
           "Not on the nginx sink: uploads over plain HTTP into the OSS emulator "
           "(`python -m oss_callback.testing`, uvicorn), which stores each object, and into "
           "a discarding app on the same uvicorn stack. Our SDK runs its default engine. "
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
    report.checks.append(Target("emulator ingest: curl -T into emulator / into discard app",
                                ratio(results, EMU_CURL, EMU_DISCARD), "<=", 1.3,
                                detail="issue #8; default: MD5 ETags, as OSS"))
    report.checks.append(Target("emulator ingest, --etag fast / discard app",
                                ratio(results, EMU_FAST_CURL, EMU_DISCARD), "<=", 1.3,
                                detail="issue #8; no MD5"))
    report.checks.append(Target(
        f"SDK resumable_upload into emulator / curl -T into it ({_size_label(size)})",
        ratio(results, EMU_RES, EMU_CURL), "<=", 1.2, detail="issue #8; default: MD5 ETags"))
    report.checks.append(Target(
        "SDK resumable_upload into emulator / curl -T into it, --etag fast",
        ratio(results, EMU_FAST_RES, EMU_FAST_CURL), "<=", 1.2, detail="issue #8; no MD5"))
    for peer in (EMU_OSS2, EMU_V2):
        if peer in results:
            report.checks.append(Target(
                f"{peer} / sdk resumable_upload -> emulator (wall)",
                ratio(results, peer, EMU_RES), ">=", 1.0, detail="issue #4 comparison",
                informational=True))




# --------------------------------------------------------------------------- last release

#: The previous RESULTS.md (``python -m benchmarks``, full run, 1 GiB, 3 rounds, same
#: 2-core VM class), measured on the hand-written stack: file bodies sent by a worker thread
#: per request on a blocking socket (``_wire``), everything else through a lean
#: asyncio/httptools pool (``_lean``). Copied by hand; its sink answered before reading.
LAST_RELEASE_DATE = "2026-11-25"
LAST_RELEASE: dict[str, str] = {
    "curl": "0.651 s; 0.63 CPU s/GiB",
    "put": "0.566 s; 0.55 CPU s/GiB; 0.97x curl wall",
    "put_sync": "0.691 s",
    "res": "0.735 s; 0.71 CPU s/GiB; 1.10x curl wall, 1.16x curl CPU",
    "res_sync": "0.775 s",
    "oss2": "10.29x",
    "oss2_wall": "7.668 s; 8.24 CPU s/GiB",
    "v2": "7.84x",
    "tls": "not measured (no TLS sink)",
    "small": "2319 objects/s; 6.50x oss2",
    "small_sync": "889 objects/s",
    "small_oss2": "378 objects/s",
    "rss1": "52.8 MiB",
    "rss4": "53.4 MiB",
}
#: numbers used in the sentence below the table
LAST_SMALL, LAST_PUT_CPU, LAST_RES_CPU = 2319.0, 0.55, 0.71


def _large(results: Mapping[str, Measured] | None, name: str, curl: str | None,
           wall_only: bool = False) -> str:
    """``0.6 s; 0.7 CPU s/GiB; 1.1x curl wall, 1.2x curl CPU`` (median wall, CPU per GiB)."""
    if not results or name not in results:
        return "–"
    m = results[name]
    if wall_only:
        return f"{m.wall:.3f} s"
    text = f"{m.wall:.3f} s; {fmt(_per_gib(m))} CPU s/GiB"
    if curl is not None and curl in results and name != curl:
        text += (f"; {fmt(ratio(results, name, curl), '.2f')}x curl wall, "
                 f"{fmt(ratio(results, name, curl, 'cpu'), '.2f')}x curl CPU")
    return text


def _objs(results: Mapping[str, Measured] | None, name: str, ref: str | None = None) -> str:
    if not results or name not in results:
        return "–"
    m = results[name]
    text = f"{m.case.objects / m.wall:.0f} objects/s"
    if ref is not None and ref in results:
        text += f"; {fmt(ratio(results, ref, name), '.2f')}x oss2"
    return text


def against_last_release(report: Report) -> str:
    s = report.settings
    sink, tls = report.results.get("sink"), report.results.get("tls")
    small, memory = report.results.get("small"), report.results.get("memory")
    n = _small_names(s)

    def peer(results: Mapping[str, Measured] | None, p: str, ours: str) -> str:
        return fmt(ratio(results, p, ours), ".2f", "x") if results else "–"

    mem = list(memory.values()) if memory else []
    label = _size_label(s.size)
    rows = [
        [f"curl -T {label}, plain HTTP (the reference)", LAST_RELEASE["curl"],
         _large(sink, CURL, CURL), ""],
        [f"put_object {label}, plain HTTP", LAST_RELEASE["put"], _large(sink, PUT, CURL),
         _large(sink, PUT_AIO, CURL)],
        [f"put_object {label}, sync facade", LAST_RELEASE["put_sync"],
         _large(sink, PUT_SYNC, None, wall_only=True), ""],
        [f"resumable_upload {label}, {s.part_size // MiB} MiB x {s.concurrency}",
         LAST_RELEASE["res"], _large(sink, RES, CURL), _large(sink, RES_AIO, CURL)],
        [f"resumable_upload {label}, sync facade", LAST_RELEASE["res_sync"],
         _large(sink, RES_SYNC, None, wall_only=True), ""],
        ["oss2.resumable_upload CRC on / ours (wall)", LAST_RELEASE["oss2"],
         peer(sink, OSS2_ON, RES), peer(sink, OSS2_ON, RES_AIO)],
        ["v2 Uploader CRC on / ours (wall)", LAST_RELEASE["v2"], peer(sink, V2_ON, RES),
         peer(sink, V2_ON, RES_AIO)],
        [f"oss2.resumable_upload CRC on, {label} (peer: only the sink changed)",
         LAST_RELEASE["oss2_wall"], _large(sink, OSS2_ON, None), ""],
        [f"TLS: put_object {label}", LAST_RELEASE["tls"], _large(tls, PUT, CURL_TLS),
         _large(tls, PUT_AIO, CURL_TLS)],
        [f"TLS: resumable_upload {label}", LAST_RELEASE["tls"], _large(tls, RES, CURL_TLS),
         _large(tls, RES_AIO, CURL_TLS)],
        [f"small puts ({s.small_count} x 4 KiB, {s.inflight} in flight)",
         LAST_RELEASE["small"], _objs(small, n[0], n[3]), _objs(small, n[1], n[3])],
        [f"small puts, sync facade, {s.inflight} threads", LAST_RELEASE["small_sync"],
         _objs(small, n[2], n[3]), ""],
        [f"small puts, oss2 {s.inflight} threads (peer: only the sink changed)",
         LAST_RELEASE["small_oss2"], _objs(small, n[3]), ""],
        [f"peak RSS, {_size_label(s.mem_sizes[0])} resumable, 8 MiB x 8", LAST_RELEASE["rss1"],
         fmt(mem[0].rss, ".1f", " MiB") if mem else "–", ""],
        [f"peak RSS, {_size_label(s.mem_sizes[-1])} resumable, 8 MiB x 8",
         LAST_RELEASE["rss4"], fmt(mem[-1].rss, ".1f", " MiB") if len(mem) > 1 else "–", ""],
    ]
    header = [f"measurement (today: {label})",
              f"{LAST_RELEASE_DATE}: hand-written stack, old sink (1 GiB)",
              "today: default engine (httpx)", "today: aiohttp engine"]
    caveat = (
        f"The {LAST_RELEASE_DATE} column is copied from the previous `RESULTS.md` (the "
        "hand-written stack: `_wire` sent file bodies from a worker thread per request on a "
        "blocking socket, `_lean` was an asyncio/httptools pool for everything else). "
        "**Caveat:** that sink answered with nginx `return`, before the body was read (nginx "
        "discarded the rest afterwards), which flattered senders that stop at the answer; "
        "today's sink reads every body whole before answering and reuses its buffers, so "
        "absolute times are not comparable one to one (the oss2 rows, whose code did not "
        "change, show how much the sink alone moves a number). Ratios to curl and to the "
        "peers, taken in the same rounds, compare better.")
    if s.quick:
        caveat += (" This is a quick run: today's sizes are smaller than the 1 GiB of the "
                   "old column, so fixed costs weigh more.")
    return (caveat + "\n\n" + markdown_table(header, rows) + "\n\n"
            + _given_up(report))


def _given_up(report: Report) -> str:
    s = report.settings
    sink, small = report.results.get("sink"), report.results.get("small")
    n = _small_names(s)
    facts = []
    if small and n[0] in small and n[1] in small:
        d, a = (s.small_count / small[x].wall for x in n[:2])
        facts.append(f"small puts run at {d:.0f} objects/s with the default engine and "
                     f"{a:.0f} with the aiohttp engine, against {LAST_SMALL:.0f} on the "
                     "hand-written pool")
    if sink and PUT in sink and RES in sink:
        facts.append(f"a {_size_label(s.size)} put_object costs {fmt(_per_gib(sink[PUT]))} "
                     f"client CPU s/GiB (was {LAST_PUT_CPU:.2f}) and a resumable upload "
                     f"{fmt(_per_gib(sink[RES]))} (was {LAST_RES_CPU:.2f})")
    measured = ("; ".join(facts) + ". ") if facts else ""
    return (
        "**What was given up, and why.** The hand-written senders and pools were faster "
        "per request than a general-purpose client: " + measured + "In exchange every "
        "request now goes through one `httpx.AsyncClient`, so the SDK behaves like any httpx "
        "program: proxies and CA bundles from the environment (`HTTPS_PROXY`, "
        "`SSL_CERT_FILE`), `http_client=` with the user's `verify`, certificates, limits and "
        "event hooks, respx for tests, one trust store for every request, and one code path "
        "to test instead of three (a blocking-socket sender, an asyncio pool and httpx). "
        "Where throughput matters more than respx, `http_engine=\"aiohttp\"` is the opt-in "
        "faster engine.")


# --------------------------------------------------------------------------- report

_TARGET_HEADER = ["target", "measured", "limit", "status", "detail"]


def write_results(report: Report, path: Path) -> None:
    s = report.settings
    lines = [
        "# Upload benchmarks: one httpx engine (issue #13, item 4: still the fastest)",
        "",
        f"Generated by `python -m benchmarks{' --quick' if s.quick else ''}` "
        f"on {report.info['date']}. Do not edit: rerun to refresh.",
        "",
        f"Mode: {'quick' if s.quick else 'full'}; large file {_size_label(s.size)}; "
        f"{s.rounds} interleaved round(s) per comparison (emulator: "
        f"{min(s.rounds, EMU_ROUNDS)}); small puts {s.small_count} x "
        f"{s.small_size // 1024} KiB with {s.inflight} in flight; memory runs at "
        + ", ".join(_size_label(x) for x in s.mem_sizes) + ". The sink is nginx, reading "
        "each request body whole before it answers, over plain HTTP and over TLS "
        "(`benchmarks/nginx_sink.py`).",
        "",
        "## Targets",
        "",
        "The issue's floors, for the default engine (`http_engine=\"httpx\"`: httpx's own "
        "transport, 8 connections) unless a row says otherwise. Ratios are medians of "
        "per-round ratios (cases interleaved in rounds).",
        "",
        *(["The floors are set for 1 GiB; at this quick run's smaller sizes, fixed costs "
           "(connections, Initiate/Complete, checkpoint fsyncs, process warm-up) weigh more, "
           "so a quick run is a smoke test, not a verdict.", ""] if s.quick else []),
        markdown_table(_TARGET_HEADER, [t.row() for t in report.targets]),
    ]
    if report.skipped:
        lines += ["", "**Notes on this run** (skipped or failed groups, changes under it):", ""]
        lines += [f"* {note}" for note in report.skipped]
    lines += ["", "## Against the last release", "", against_last_release(report)]
    if report.checks:
        lines += ["", "## Other checks", "",
                  "Informational comparisons (status `info`: a limit for orientation, not a "
                  "floor) and the emulator targets of issue #8.", "",
                  markdown_table(_TARGET_HEADER, [t.row() for t in report.checks])]
    lines += ["", "## Machine", "",
              markdown_table(["", "value"], [[k, v] for k, v in report.info.items()])]
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
* The code measured is a snapshot: `oss_callback` and `benchmarks` are copied at the start
  (and checked with a few small uploads, retaken if caught mid-edit), and every worker and
  server process runs from the copy, so all groups measure the same code even while the
  working tree is being edited. `oss_callback measured` under Machine names it (git HEAD,
  uncommitted files, a digest of the sources); `--no-snapshot` runs the tree itself.
* Our SDK is built as a user would build it: `AsyncClient(endpoint, id, secret, region=...)`
  with the default engine and 8 connections unless a row names `http_engine="aiohttp"` or a
  `max_connections`; the async cases run with `anyio.run` on asyncio's own loop (uvloop only
  where a row says so); the sync facade is `Client(...)` called from plain threads.
* The cases of one comparison run in rounds, each round in a rotated order; ratios are taken
  inside a round and the median over rounds is reported, so load from other work on the
  machine affects both sides of a ratio.
* The source file is written once per size in a temp dir (it stays in the page cache).
* The sink (`benchmarks/nginx_sink.py`: one nginx process, `master_process off`) reads every
  request body whole before it answers, like OSS: a front server buffers the body
  (`proxy_request_buffering on`: in memory up to 1.1 GB, beyond that in a temp file on
  tmpfs) and only then asks an answering server on a Unix socket for the fixed OSS answer
  (an ETag for PutObject/UploadPart; OSS XML for Initiate/Complete/ListParts). glibc
  tunables keep nginx's freed buffers for reuse. It sends no `x-oss-hash-crc64ecma`, so
  clients compute CRC-64 but have nothing to compare it with. The same server listens with
  TLS (TLSv1.2/1.3, a self-signed ECDSA P-256 certificate for 127.0.0.1): nginx decrypts.
  On 2 cores the sink and the client compete for CPU; `server CPU` shows the sink's share.
* TLS trust: curl `--cacert`; our SDK `SSL_CERT_FILE` in the worker's environment (the SDK's
  client has `trust_env=True`; the aiohttp engine builds its context with httpx's
  `create_ssl_context`, which reads the same variable); oss2 and the v2 SDK (requests)
  `REQUESTS_CA_BUNDLE`. Every client verifies the certificate.
* Peers: `oss2.resumable_upload(bucket, key, file, part_size=, num_threads=,
  multipart_threshold=part_size, store=ResumableStore(tmp))` on `oss2.Bucket(...,
  enable_crc=..., session=oss2.Session(pool_size=...))`; the v2 SDK's
  `client.uploader(part_size=, parallel_num=, enable_checkpoint=True,
  checkpoint_dir=tmp).upload_file(...)` with `disable_upload_crc64_check` for CRC off. Small
  puts: `bucket.put_object` / `client.put_object` from a 64-thread pool. Our SDK always
  computes CRC-64.
* Keys are dummies (the sink checks no signature) and are never printed.
"""


# --------------------------------------------------------------------------- main


SNAPSHOT_TRIES, SNAPSHOT_WAIT = 6, 20.0


def snapshot(dest: Path) -> None:
    """Copy the code to measure (see :func:`take_snapshot`); retake while it won't import.

    The tree may be mid-edit at the moment of the copy; a copy that doesn't import is
    retaken after a pause.
    """
    for attempt in range(SNAPSHOT_TRIES):
        take_snapshot(dest)
        error = check_snapshot()
        if error is None:
            return
        _log(f"snapshot of oss_callback does not import ({error}); retaking it in "
             f"{SNAPSHOT_WAIT:.0f} s ({attempt + 1}/{SNAPSHOT_TRIES})")
        time.sleep(SNAPSHOT_WAIT)
    raise SystemExit("oss_callback does not import; nothing to measure")


def smoke_test(env: Env, scratch: Path, report: Report) -> None:
    """A few small uploads with the snapshot (both engines, async and sync, every op);
    retake the snapshot while they fail (a copy caught in the middle of an edit)."""
    small = make_file(scratch / "smoke.bin", 3 * MiB + 5)
    ops: list[tuple[str, str, dict[str, Any]]] = [
        ("sdk", "put", {"file": str(small)}),
        ("sdk", "put", {"file": str(small), **AIOHTTP}),
        ("sdk_sync", "put", {"file": str(small)}),
        ("sdk", "resumable", {"file": str(small), "part_size": MiB, "concurrency": 2}),
        ("sdk", "small", {"count": 64, "object_size": 4096, "inflight": 16}),
        ("sdk", "small", {"count": 64, "object_size": 4096, "inflight": 16, **AIOHTTP,
                          "patches": ["keep_cookies"]}),
    ]
    for attempt in range(SNAPSHOT_TRIES):
        try:
            for client, op, kw in ops:
                run_worker(env.spec(client, op, key=_key("smoke"), **kw))
            return
        except RuntimeError as exc:
            _log(f"smoke test failed ({str(exc).splitlines()[0]}); retaking the snapshot in "
                 f"{SNAPSHOT_WAIT:.0f} s ({attempt + 1}/{SNAPSHOT_TRIES})")
            time.sleep(SNAPSHOT_WAIT)
            snapshot(scratch / "code")
            report.info["oss_callback measured"] = source_state()
    raise SystemExit("the SDK fails the smoke test; nothing to measure")


def _guarded(report: Report, group: str, fn: Callable[[], None]) -> None:
    """Run one group; a failure is reported (and the other groups still run)."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:600] if str(exc).strip() else ""
        msg = f"group '{group}' FAILED: {type(exc).__name__}: {first}"
        print("\n" + msg, flush=True)
        report.skipped.append(msg)


def settings_from(args: argparse.Namespace) -> Settings:
    size = args.size or (128 * MiB if args.quick else 1 * GiB)
    groups = tuple(g.strip() for g in args.only.split(",")) if args.only else GROUPS
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
        rounds=args.rounds or (2 if args.quick else 5),
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
                        help="128 MiB instead of 1 GiB, 500 small puts, 2 rounds")
    parser.add_argument("--size", type=parse_size, default=None, help="large file size")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison")
    parser.add_argument("--small-count", type=int, default=None, help="number of small puts")
    parser.add_argument("--only", default="", help="comma-separated groups: " + ",".join(GROUPS))
    parser.add_argument("--tmpdir", default=None, help="where to put the test files")
    parser.add_argument("--emulator-data-dir", type=Path, default=None,
                        help="where the emulator stores objects (default: beside the test "
                        "files; e.g. /dev/shm to take the disk out of the comparison)")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="run the workers on the working tree itself instead of a copy "
                        "of oss_callback taken at the start")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md",
                        help="markdown report (default benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    s = settings_from(args)
    started = time.perf_counter()
    accounting = cpu_accounting()
    report = Report(settings=s, info=machine_info())
    print("machine: " + ", ".join(f"{k}={v}" for k, v in list(report.info.items())[:9]))
    measured: str | None = None  # the digest of the code measured
    with tempfile.TemporaryDirectory(prefix="bench-upload-", dir=args.tmpdir) as tmp:
        scratch = Path(tmp)
        if not args.no_snapshot:
            snapshot(scratch / "code")
        report.info["oss_callback measured"] = source_state()
        measured = report.info["oss_callback measured"].split("digest ")[-1][:12]
        print(f"measuring oss_callback: {report.info['oss_callback measured']}", flush=True)
        big = make_file(scratch / f"src-{s.size}.bin", s.size)
        sink_groups = [g for g in s.groups if g in SINK_GROUPS]
        if sink_groups and find_nginx() is None:
            msg = ("nginx is not installed: SKIPPING the nginx-sink benchmarks ("
                   + ", ".join(sink_groups) + "). Install it with `apt-get install nginx-light`.")
            print("\n" + msg, flush=True)
            report.skipped.append(msg)
        elif sink_groups:
            with NginxSink() as sink:
                env = Env(sink.endpoint, SINK_KEYS, sink.cpu_seconds, scratch,
                          server_log=sink.error_log)
                tls_env = Env(sink.tls_endpoint, SINK_KEYS, sink.cpu_seconds, scratch,
                              ca_file=sink.ca_file, server_log=sink.error_log)
                print(f"nginx sink on {sink.endpoint} and {sink.tls_endpoint} "
                      f"(pid {sink.pid})", flush=True)
                if not args.no_snapshot:
                    smoke_test(env, scratch, report)
                    measured = report.info["oss_callback measured"].split("digest ")[-1][:12]
                _guarded(report, "sink warm-up", lambda: warm_sink(env, tls_env, big))

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
                    "tls": lambda: sink_tls(report, s, tls_env, big),
                    "small": lambda: sink_small(report, s, env),
                    "memory": memory,
                    "scaling": lambda: sink_scaling(report, s, env, big),
                    "profile": lambda: profile_group(report, s, env, tls_env, big),
                    "ablations": lambda: ablations_group(report, s, env, tls_env, big),
                }
                for name, fn in groups.items():
                    if name in s.groups:
                        _guarded(report, name, fn)
        if "emulator" in s.groups:
            _guarded(report, "emulator", lambda: emulator_group(
                report, s, scratch, big, args.emulator_data_dir))
    print("\n== Targets (the issue's floors; default engine unless said)\n"
          + text_table(_TARGET_HEADER, [t.row() for t in report.targets]))
    if report.checks:
        print("\n== Other checks\n" + text_table(_TARGET_HEADER,
                                                 [t.row() for t in report.checks]))
    try:
        load = os.getloadavg()
        report.info["load at end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        pass
    report.info["run time"] = f"{time.perf_counter() - started:.0f} s"
    report.info["other load during the run"] = other_load(
        accounting, cpu_accounting(), time.perf_counter() - started)
    live = source_state(REPO)
    report.info["oss_callback in the tree at the end"] = live
    if measured is not None and live.split("digest ")[-1][:12] != measured:
        report.skipped.append(
            "the working tree's oss_callback changed while this ran (other work on it); "
            "every group measured the snapshot taken at the start (see Machine)")
    write_results(report, args.output)
    print(f"\nwrote {args.output}" + (f" and {report.scaling_png}" if report.scaling_png
                                       else "") + f" in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
