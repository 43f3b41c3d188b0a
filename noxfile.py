"""Developer entry points: ``nox -s tests lint typing``; ``nox -s bench`` and ``soak`` on demand."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"

PYTHONS = ["3.11"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite (without soak tests) on the emulator and unit seams."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not soak", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "oss_callback", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "oss_callback")


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
