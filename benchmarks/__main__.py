"""``python -m benchmarks [--quick] [--only GROUPS]``: the upload benchmark suite."""

from .bench_upload import main

raise SystemExit(main())
