"""The `dualplane` command, at the top of the floors: the composition root that builds the task
catalog and hands it to both planes. :func:`main` is the console script and `python -m dualplane`."""

from dualplane.cli.main import main

__all__ = ["main"]
