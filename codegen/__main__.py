"""Entry point: ``python -m codegen [--check] [--schemas DIR] [--models DIR]``."""

from codegen.generate import main

raise SystemExit(main())
