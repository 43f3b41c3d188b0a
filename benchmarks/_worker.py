"""One measured client run, in a process of its own: ``python -m benchmarks._worker SPEC``.

``SPEC`` is a JSON object (see :class:`Spec`). The worker imports and sets up the client
first, then times only the operation: wall time (``perf_counter``), CPU time of the whole
process (user + system over all its threads, from ``getrusage``) and the process's peak RSS
(``VmHWM``, which includes the interpreter and imports). It prints one line
``RESULT {json}`` at the end. With ``"profile": "/path.prof"`` the operation runs under
cProfile (event-loop/main thread only) and the stats are dumped there.

Clients: ``sdk`` (:class:`oss_callback.AsyncClient`), ``sdk_sync`` (the sync facade
:class:`oss_callback.Client`), ``oss2``, ``v2`` (``alibabacloud_oss_v2``). Our SDK's client is
built as a user would build it: ``http_engine`` (``"httpx"``, the default, or ``"aiohttp"``)
and ``max_connections`` are passed only when the spec sets them, so the SDK's defaults are
what is measured otherwise; ``loop: "uvloop"`` runs the async cases on uvloop instead of
asyncio's own loop. TLS trust comes from the environment (``SSL_CERT_FILE`` for our SDK,
``REQUESTS_CA_BUNDLE`` for the requests-based peers), set by the caller.
Ops: ``put`` (one PutObject from a file), ``resumable`` (multipart with checkpoint),
``small`` (``count`` objects of ``object_size`` bytes with ``inflight`` in flight).
"""

from __future__ import annotations

import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

MiB = 1024 * 1024


class Spec(TypedDict, total=False):
    client: str  # sdk | sdk_sync | oss2 | v2
    op: str  # put | resumable | small
    endpoint: str
    bucket: str
    access_key_id: str
    access_key_secret: str
    region: str
    key: str
    file: str
    part_size: int
    concurrency: int
    crc: bool  # peers only: their CRC-64 on/off (ours is always on)
    http_engine: str  # sdk/sdk_sync: "httpx" (default) | "aiohttp"
    max_connections: int  # sdk/sdk_sync: absent = the SDK's default (8)
    loop: str  # sdk: "asyncio" (default) | "uvloop"
    checkpoint_dir: str
    count: int
    object_size: int
    inflight: int
    profile: str  # dump a cProfile of the operation here
    patches: list[str]  # optimisations to switch off first (see _patches.py)
    wait_go: bool  # print READY after setup and wait for a line on stdin
    keep_heap: bool  # glibc keeps freed heap memory, as the oss-callback upload command does


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    hwm = _status_kib("VmHWM")
    if hwm is None:  # not Linux: ru_maxrss is KiB on Linux/BSD, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / (MiB if sys.platform == "darwin" else 1024)
    return hwm / 1024


def rss_mib() -> float:
    rss = _status_kib("VmRSS")
    return rss / 1024 if rss is not None else peak_rss_mib()


# --------------------------------------------------------------------------- our SDK


def _sdk_options(spec: Spec) -> dict[str, Any]:
    """Constructor options: only those the spec sets (else the SDK's defaults apply)."""
    options: dict[str, Any] = {"region": spec.get("region", "cn-hangzhou")}
    if spec.get("http_engine"):
        options["http_engine"] = spec["http_engine"]
    if spec.get("max_connections"):
        options["max_connections"] = spec["max_connections"]
    return options


def _sdk_async(spec: Spec) -> Callable[[], dict[str, Any]]:
    import anyio

    from oss_callback import AsyncClient

    def run() -> dict[str, Any]:
        async def main() -> dict[str, Any]:
            async with AsyncClient(
                spec["endpoint"], spec["access_key_id"], spec["access_key_secret"],
                **_sdk_options(spec),
            ) as client:
                bucket = client.get_bucket(spec["bucket"])
                return await _timed_async(lambda: _sdk_op(bucket, spec), spec)

        loop = spec.get("loop", "asyncio")
        if loop not in ("asyncio", "uvloop"):
            raise ValueError(f"unknown loop {loop!r}")
        return anyio.run(main, backend="asyncio",
                         backend_options={"use_uvloop": loop == "uvloop"})

    return run


async def _sdk_op(bucket: Any, spec: Spec) -> dict[str, Any]:
    import anyio

    op = spec["op"]
    if op == "put":
        r = await bucket.put_object(spec["key"], file=spec["file"])
        return {"bytes": r.size}
    if op == "resumable":
        r = await bucket.resumable_upload(
            spec["key"], spec["file"], part_size=spec["part_size"],
            concurrency=spec["concurrency"], checkpoint_file=_ckpt(spec),
        )
        return {"bytes": r.size, "upload_id": r.upload_id}
    if op == "small":
        data = os.urandom(spec["object_size"])
        keys = iter(range(spec["count"]))

        async def worker() -> None:
            for i in keys:
                await bucket.put_object(f"{spec['key']}/{i:06d}", data)

        async with anyio.create_task_group() as tg:
            for _ in range(spec["inflight"]):
                tg.start_soon(worker)
        return {"objects": spec["count"], "bytes": spec["count"] * spec["object_size"]}
    raise ValueError(f"unknown op {op!r}")


def _ckpt(spec: Spec) -> str:
    return os.path.join(spec["checkpoint_dir"], f"ckpt-{os.getpid()}.json")


def _sdk_sync(spec: Spec) -> Callable[[], dict[str, Any]]:
    from oss_callback import Client

    client = Client(
        spec["endpoint"], spec["access_key_id"], spec["access_key_secret"],
        **_sdk_options(spec),
    )
    bucket = client.get_bucket(spec["bucket"])

    def run() -> dict[str, Any]:
        try:
            return _timed(lambda: _sync_op(bucket, spec), spec)
        finally:
            client.close()

    return run


def _sync_op(bucket: Any, spec: Spec) -> dict[str, Any]:
    op = spec["op"]
    if op == "put":
        r = bucket.put_object(spec["key"], file=spec["file"])
        return {"bytes": r.size}
    if op == "resumable":
        r = bucket.resumable_upload(
            spec["key"], spec["file"], part_size=spec["part_size"],
            concurrency=spec["concurrency"], checkpoint_file=_ckpt(spec),
        )
        return {"bytes": r.size, "upload_id": r.upload_id}
    if op == "small":
        data = os.urandom(spec["object_size"])
        with ThreadPoolExecutor(spec["inflight"]) as pool:
            list(pool.map(lambda i: bucket.put_object(f"{spec['key']}/{i:06d}", data),
                          range(spec["count"])))
        return {"objects": spec["count"], "bytes": spec["count"] * spec["object_size"]}
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------- peers


def _oss2(spec: Spec) -> Callable[[], dict[str, Any]]:
    import oss2

    pool = max(spec.get("inflight", 0), spec.get("concurrency", 0), 10)
    bucket = oss2.Bucket(
        oss2.Auth(spec["access_key_id"], spec["access_key_secret"]), spec["endpoint"],
        spec["bucket"], is_path_style=True, enable_crc=spec.get("crc", True),
        session=oss2.Session(pool_size=pool),
    )

    def op() -> dict[str, Any]:
        if spec["op"] == "put":
            bucket.put_object_from_file(spec["key"], spec["file"])
            return {"bytes": os.path.getsize(spec["file"])}
        if spec["op"] == "resumable":
            oss2.resumable_upload(
                bucket, spec["key"], spec["file"],
                store=oss2.ResumableStore(root=spec["checkpoint_dir"], dir=f"oss2-{os.getpid()}"),
                part_size=spec["part_size"], num_threads=spec["concurrency"],
                multipart_threshold=spec["part_size"],
            )
            return {"bytes": os.path.getsize(spec["file"])}
        if spec["op"] == "small":
            data = os.urandom(spec["object_size"])
            with ThreadPoolExecutor(spec["inflight"]) as ex:
                list(ex.map(lambda i: bucket.put_object(f"{spec['key']}/{i:06d}", data),
                            range(spec["count"])))
            return {"objects": spec["count"], "bytes": spec["count"] * spec["object_size"]}
        raise ValueError(f"unknown op {spec['op']!r}")

    return lambda: _timed(op, spec)


def _v2(spec: Spec) -> Callable[[], dict[str, Any]]:
    import alibabacloud_oss_v2 as oss

    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
        spec["access_key_id"], spec["access_key_secret"]
    )
    cfg.region = spec.get("region", "cn-hangzhou")
    cfg.endpoint = spec["endpoint"]
    cfg.use_path_style = True
    cfg.disable_upload_crc64_check = not spec.get("crc", True)
    client = oss.Client(cfg)

    def op() -> dict[str, Any]:
        if spec["op"] == "resumable":
            uploader = client.uploader(
                part_size=spec["part_size"], parallel_num=spec["concurrency"],
                enable_checkpoint=True,
                checkpoint_dir=os.path.join(spec["checkpoint_dir"], f"v2-{os.getpid()}"),
            )
            os.makedirs(os.path.join(spec["checkpoint_dir"], f"v2-{os.getpid()}"), exist_ok=True)
            uploader.upload_file(
                oss.PutObjectRequest(bucket=spec["bucket"], key=spec["key"]),
                filepath=spec["file"],
            )
            return {"bytes": os.path.getsize(spec["file"])}
        if spec["op"] == "put":
            with open(spec["file"], "rb") as f:
                client.put_object(oss.PutObjectRequest(bucket=spec["bucket"], key=spec["key"],
                                                       body=f))
            return {"bytes": os.path.getsize(spec["file"])}
        if spec["op"] == "small":
            data = os.urandom(spec["object_size"])
            with ThreadPoolExecutor(spec["inflight"]) as ex:
                list(ex.map(
                    lambda i: client.put_object(oss.PutObjectRequest(
                        bucket=spec["bucket"], key=f"{spec['key']}/{i:06d}", body=data)),
                    range(spec["count"])))
            return {"objects": spec["count"], "bytes": spec["count"] * spec["object_size"]}
        raise ValueError(f"unknown op {spec['op']!r}")

    return lambda: _timed(op, spec)


# --------------------------------------------------------------------------- timing


def _measure_start(spec: Spec) -> tuple[float, tuple[float, float], float]:
    if spec.get("wait_go"):  # a profiler attaches now (after imports and client setup)
        print("READY", flush=True)
        sys.stdin.readline()
    return time.perf_counter(), _cpu(), rss_mib()


def _measure_end(start: tuple[float, tuple[float, float], float],
                 extra: dict[str, Any]) -> dict[str, Any]:
    wall = time.perf_counter() - start[0]
    user, sys_ = _cpu()
    return {
        "wall": wall,
        "user": user - start[1][0],
        "sys": sys_ - start[1][1],
        "cpu": user - start[1][0] + sys_ - start[1][1],
        "rss_before_mib": start[2],
        "rss_peak_mib": peak_rss_mib(),
        **extra,
    }


def _timed(op: Callable[[], dict[str, Any]], spec: Spec) -> dict[str, Any]:
    prof = cProfile.Profile() if spec.get("profile") else None
    start = _measure_start(spec)
    if prof is not None:
        prof.enable()
    try:
        extra = op()
    finally:
        if prof is not None:
            prof.disable()
    result = _measure_end(start, extra)
    if prof is not None:
        prof.dump_stats(spec["profile"])
    return result


async def _timed_async(op: Callable[[], Any], spec: Spec) -> dict[str, Any]:
    prof = cProfile.Profile() if spec.get("profile") else None
    start = _measure_start(spec)
    if prof is not None:
        prof.enable()
    try:
        extra = await op()
    finally:
        if prof is not None:
            prof.disable()
    result = _measure_end(start, extra)
    if prof is not None:
        prof.dump_stats(spec["profile"])
    return result


CLIENTS: dict[str, Callable[[Spec], Callable[[], dict[str, Any]]]] = {
    "sdk": _sdk_async,
    "sdk_sync": _sdk_sync,
    "oss2": _oss2,
    "v2": _v2,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks._worker SPEC_JSON", file=sys.stderr)
        return 2
    spec: Spec = json.loads(args[0])
    if spec.get("keep_heap"):
        from oss_callback.client._heap import keep_heap

        if not keep_heap():
            raise SystemExit("keep_heap() could not tune this process's malloc")
    if spec.get("patches"):
        from ._patches import apply

        apply(spec["patches"])
    run = CLIENTS[spec["client"]](spec)
    result = run()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
