"""``python -m oss_callback`` is the ``oss-callback`` command."""

import sys

from ._cli import main

sys.exit(main())
