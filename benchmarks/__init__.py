"""Benchmarks of oss_callback against ``curl -T`` and the official SDKs (issues #8 and #13).

``python -m benchmarks [--quick]`` (or ``nox -s bench``) runs the suite and writes
``benchmarks/RESULTS.md`` and ``benchmarks/scaling.png``; see :mod:`benchmarks.bench_upload`.
Both HTTP engines are measured (the default httpx transport and ``http_engine="aiohttp"``),
over plain HTTP and TLS, on an nginx sink that reads every body whole. The standalone
scripts ``bench_emulator.py``, ``bench_sync_overhead.py`` and ``bench_pool.py`` (client CPU
per small request by engine and pool size) still run on their own.
"""
