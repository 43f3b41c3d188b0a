"""Client CPU per request by HTTP engine and pool size (small PutObjects into the emulator).

``python -m benchmarks.bench_pool [--objects 2000] [--size 4096] [--concurrency 64]
[--rounds 3]``

Cases: ``httpx-8`` (the SDK's default: httpx's own transport, 8 connections), ``httpx-64``
(``max_connections=64``), ``aiohttp-8`` (``http_engine="aiohttp"``) and ``aiohttp-64``.
Starts the OSS emulator in a process of its own, then, for each round, runs each case in a
fresh worker process (this file with ``--worker``) that uploads ``--objects`` objects of
``--size`` bytes with ``--concurrency`` PutObjects in flight through one
:class:`oss_callback.AsyncClient`. The worker measures its own CPU time (``getrusage``: user
+ system) and wall time around the uploads only (after a warm-up that opens the
connections), so interpreter start-up and imports are not counted. Cases alternate order
from round to round; medians are reported. CPU time is the number to compare on a shared
machine: wall time and objects/s also depend on the emulator and on other load.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

ACCESS_KEY_ID = "LTAI-oss-emulator"
ACCESS_KEY_SECRET = "oss-emulator-secret"
REGION = "cn-hangzhou"
BUCKET = "bench"
CASES = ("httpx-8", "httpx-64", "aiohttp-8", "aiohttp-64")
REFERENCE = "httpx-8"  # the SDK's default


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _upload(endpoint: str, case: str, objects: int, size: int,
                  concurrency: int) -> dict[str, Any]:
    import anyio

    from oss_callback import AsyncClient

    engine, _, connections = case.partition("-")
    data = b"b" * size
    async with AsyncClient(endpoint, ACCESS_KEY_ID, ACCESS_KEY_SECRET, region=REGION,
                           max_connections=int(connections),
                           http_engine=engine) as client:  # type: ignore[arg-type]
        bucket = client.get_bucket(BUCKET)

        async def run(n: int, prefix: str) -> None:
            next_index = 0

            async def worker() -> None:
                nonlocal next_index
                while next_index < n:
                    i = next_index
                    next_index += 1
                    await bucket.put_object(f"{prefix}/{i}", data)

            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)

        await run(2 * concurrency, f"warmup-{case}")  # opens the connections
        cpu0, wall0 = _cpu(), time.perf_counter()
        await run(objects, case)
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    return {"case": case, "cpu": cpu, "wall": wall, "objects": objects}


def _worker(args: argparse.Namespace) -> int:
    import anyio

    result = anyio.run(_upload, args.endpoint, args.case, args.objects, args.size,
                       args.concurrency)
    print(json.dumps(result))
    return 0


def _start_emulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "oss_callback.testing", "--port", "0", "--bucket", BUCKET],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    prefix = "OSS emulator listening on "
    if not line.startswith(prefix):
        proc.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return proc, line[len(prefix):].strip()


def _server_cpu(pid: int) -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table (and a JSON line with the medians)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    emulator, endpoint = _start_emulator()
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    try:
        for round_no in range(args.rounds):
            shift = round_no % len(CASES)
            order = CASES[shift:] + CASES[:shift]
            for case in order:
                server0 = _server_cpu(emulator.pid)
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_pool", "--worker",
                     "--endpoint", endpoint, "--case", case, "--objects", str(args.objects),
                     "--size", str(args.size), "--concurrency", str(args.concurrency)],
                    check=True, capture_output=True, text=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                result["server_cpu"] = _server_cpu(emulator.pid) - server0
                runs[case].append(result)
                print(f"round {round_no + 1} {case:14s} cpu {result['cpu']:.3f} s  "
                      f"wall {result['wall']:.3f} s  "
                      f"{result['objects'] / result['wall']:.0f} obj/s  "
                      f"server cpu {result['server_cpu']:.2f} s", flush=True)
    finally:
        emulator.terminate()
        emulator.wait(10)

    print(f"\n{args.objects} x {args.size} B put_object, {args.concurrency} in flight, "
          f"median of {args.rounds} rounds (client process CPU = user + system):")
    print(f"{'case':14s} {'CPU s':>8s} {'CPU ms/req':>11s} {'wall s':>8s} {'obj/s':>8s}")
    summary: dict[str, dict[str, float]] = {}
    for case in CASES:
        cpu = statistics.median(r["cpu"] for r in runs[case])
        wall = statistics.median(r["wall"] for r in runs[case])
        summary[case] = {"cpu_s": cpu, "wall_s": wall, "objects_per_s": args.objects / wall}
        print(f"{case:14s} {cpu:8.3f} {1000 * cpu / args.objects:11.3f} {wall:8.3f} "
              f"{args.objects / wall:8.0f}")
    # Ratios are taken within each round (both cases saw the same machine load), then the
    # median over rounds: steadier than a ratio of medians on a shared machine.
    for case in CASES:
        if case == REFERENCE:
            continue
        pairs = zip(runs[REFERENCE], runs[case], strict=True)
        ratios = [ref["cpu"] / other["cpu"] for ref, other in pairs]
        ratio = statistics.median(ratios)
        summary[f"cpu_ratio_{REFERENCE}_over_{case}"] = {"median": ratio, "min": min(ratios),
                                                         "max": max(ratios)}
        print(f"client CPU, {REFERENCE} / {case} (per round): median {ratio:.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}x)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
