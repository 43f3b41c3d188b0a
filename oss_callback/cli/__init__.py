"""The ``oss-callback`` command: ``demo``, ``upload``, ``abort-uploads``, ``emulator``,
``callback-server`` and ``callback-test``."""

from oss_callback.cli._main import main

__all__ = ["main"]
