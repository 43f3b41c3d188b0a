"""Benchmarks of oss_callback against ``curl -T`` and the official SDKs (issue #8).

``python -m benchmarks [--quick]`` (or ``nox -s bench``) runs the suite and writes
``benchmarks/RESULTS.md`` and ``benchmarks/scaling.png``; see :mod:`benchmarks.bench_upload`.
The older standalone scripts ``bench_emulator.py`` and ``bench_sync_overhead.py`` still run
on their own.
"""
