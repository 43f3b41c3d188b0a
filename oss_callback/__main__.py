"""``python -m oss_callback`` is the ``oss-callback`` command."""

import sys

from oss_callback.cli._main import main

sys.exit(main())
