"""``python -m oss_callback.testing``: run the OSS emulator (same as ``oss-callback emulator``)."""

import sys

from oss_callback.testing._cli import main_emulator

sys.exit(main_emulator())
