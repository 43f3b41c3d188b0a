"""Developer entry points: ``nox -s lint typing tests`` is the test command (``bash .ci/run``
installs nox in a private virtualenv and runs exactly that); ``nox -s soak`` and
``nox -s bench`` on demand.

Pythons: the package claims 3.10 to 3.13 (``requires-python = ">=3.10"``), and ``tests``
runs on each of them this machine has: a working ``python3.X`` on PATH, or one that pyenv
has installed without it being active (its ``versions/3.X.*/bin`` then goes first on PATH,
for nox to find it). The others are skipped; the run's first line says which Pythons run.

Time budget: CI has 2 cores, and all of ``.ci/run`` should stay under about 10 minutes. So
the whole suite (about 5 minutes), with coverage, runs once, on the first Python found,
newest first (mypy checks the code against 3.10's standard library, statically); on each
other Python a fast subset of about 25 s: the files in ``FAST_FILES``, on asyncio only,
without the comparisons with the official SDKs (``oracle``). Each Python also costs its
virtualenv (about 25 s of pip). Measured on a busy 2-core machine with all four Pythons:
8.5 minutes for the whole of ``.ci/run`` (5 for the full suite). ``nox -s tests -- ARGS``
runs pytest with ARGS instead, on every Python, without coverage.

Coverage: the full run prints the total, and fails under ``[tool.coverage.report]
fail_under`` in pyproject.toml (the figure when coverage was first measured, rounded down;
raise it as coverage grows). It runs as ``coverage run -m pytest``, not pytest-cov: the
package's pytest plugin is imported before pytest-cov would start. The ``oss-callback``
subprocesses of the CLI tests are not measured. ``coverage report -m`` afterwards lists the
missed lines.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True  # reruns: pip only adds what changed
nox.options.download_python = "never"  # only the Pythons this machine has
nox.options.error_on_missing_interpreters = False

#: Every Python the package claims (pyproject.toml: requires-python), newest first: the
#: first one found runs the whole suite (see the module docstring).
PYTHONS = ["3.13", "3.12", "3.11", "3.10"]

#: The fast subset on the other Pythons: these test files (found by name anywhere under
#: tests/), on asyncio only, without the official SDKs' comparisons. Chosen to run in about
#: 25 s and to touch what differs between Pythons: the compiled and TLS dependencies
#: (CRC-64, cryptography, ssl), the signing and encoding code, the sync facade's threads,
#: the emulator and callbacks end to end.
FAST_FILES = [
    "test_public_api.py", "test_signing_vectors.py", "test_callback_encoding.py",
    "test_errors_unit.py", "test_crc64.py", "test_callback_sni.py", "test_client_unit.py",
    "test_post_policy.py", "test_emulator_post.py", "test_respx.py", "test_sync_facade.py",
    "test_resumable_unit.py", "test_callback_e2e.py", "test_sync_integration.py",
    "test_credentials.py", "test_input_edges.py", "test_integration.py",
    "test_emulator_callbacks.py", "test_redaction.py", "test_options.py",
]
_FAST = ["--backend", "asyncio", "-m", "not soak and not oracle"]


def _runs(python: str) -> bool:
    """Does ``python`` start (a pyenv shim for a version that isn't active doesn't)?"""
    try:
        done = subprocess.run([python, "-c", "import venv"], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _pyenv_python(version: str) -> str | None:
    """pyenv's newest installed ``version`` (e.g. ``3.12`` -> ``.../3.12.1/bin/python3.12``)."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))

    def patch(path: str) -> int:
        m = re.search(rf"/{re.escape(version)}\.(\d+)/bin/", path)
        return int(m.group(1)) if m else -1

    for python in sorted(found, key=patch, reverse=True):
        if _runs(python):
            return python
    return None


def _available(versions: list[str]) -> list[str]:
    """The versions this machine has; pyenv's inactive ones are put on PATH for nox."""
    found = []
    for version in versions:
        on_path = shutil.which(f"python{version}")
        if on_path and _runs(on_path):
            found.append(version)
        elif python := _pyenv_python(version):
            os.environ["PATH"] = os.path.dirname(python) + os.pathsep + os.environ["PATH"]
            found.append(version)
    return found


TEST_PYTHONS = _available(PYTHONS)
_MISSING = [v for v in PYTHONS if v not in TEST_PYTHONS]
print(
    "noxfile: tests on Python "
    + (", ".join(TEST_PYTHONS) or "(none found)")
    + (f" (the full suite on {TEST_PYTHONS[0]}, a fast subset on the others)"
       if len(TEST_PYTHONS) > 1 else "")
    + (f"; not on this machine, skipped: {', '.join(_MISSING)}" if _MISSING else ""),
    file=sys.stderr,
)


@nox.session(python=TEST_PYTHONS or None)
def tests(session: nox.Session) -> None:
    """The test suite: all of it with coverage on the first Python, a fast subset on the
    others (arguments after ``--`` go to pytest instead, on every Python)."""
    session.install("-e", ".[test]")
    if session.posargs:
        session.run("pytest", "-m", "not soak", *session.posargs)
    elif not TEST_PYTHONS or session.python == TEST_PYTHONS[0]:
        _full_suite_with_coverage(session)
    else:
        files = sorted(f for name in FAST_FILES for f in glob.glob(f"tests/**/{name}",
                                                                   recursive=True))
        session.run("pytest", *_FAST, *files)


def _full_suite_with_coverage(session: nox.Session) -> None:
    version = tuple(int(n) for n in str(session.python or "").split(".") if n.isdigit())
    # sys.monitoring (3.12+) measures lines at a fraction of the tracer's cost
    env = {"COVERAGE_CORE": "sysmon"} if version >= (3, 12) else {}
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", "-m", "not soak", env=env)
    # exits 2 under [tool.coverage.report] fail_under; `coverage report -m` lists the misses
    total = session.run("coverage", "report", "--format=total", silent=True)
    session.log(f"coverage of oss_callback: {str(total).strip()}% of its lines "
                "(.coverage; coverage report -m lists the missed ones)")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "oss_callback", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package and the tests ([tool.mypy] in pyproject.toml)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "oss_callback", "tests")


@nox.session
def soak(session: nox.Session) -> None:
    """Long reliability tests (crash-resume rounds)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against curl and the official SDKs; ``nox -s bench -- --quick``."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
