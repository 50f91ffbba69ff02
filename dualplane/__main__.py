"""`python -m dualplane` is the `dualplane` console script (`up` starts children this way)."""

from dualplane.cli import main

raise SystemExit(main())
