"""Code generation for dualplane: Pydantic models from the JSON Schemas.

Run ``python -m codegen`` from the repository root to regenerate
``dualplane/common/models/``; ``python -m codegen --check`` verifies it is
up to date (see :mod:`codegen.generate`).
"""

from codegen.generate import generate, main, run_check, run_generate

__all__ = ["generate", "main", "run_check", "run_generate"]
