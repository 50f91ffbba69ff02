"""One virtual environment per peer, built with ``python3.11 -m venv`` + pip and cached.

The peers cannot share one environment (arq 0.28 needs redis-py < 6, Celery's Redis
transport ≥ 6.4), and none of them goes into dualplane's. Each environment lives under
``<cache>/<peer>-<hash of its pinned requirements and the Python version>``, so a second run
reuses it and a change of pins builds a new one; ``--fresh`` rebuilds.

Standard library only (run.py imports it from dualplane's venv).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Pinned requirements of each peer. hiredis everywhere dualplane has it (redis-py's fast parser);
#: uvloop where the peer runs on asyncio (saq, arq), as dualplane's planes do.
REQUIREMENTS: dict[str, list[str]] = {
    "dramatiq": ["dramatiq[redis]==2.2.1", "redis[hiredis]"],
    "saq": ["saq[hiredis]==0.26.4", "uvloop==0.23.0", "typing_extensions"],  # saq imports it undeclared
    "arq": ["arq==0.28.0", "redis[hiredis]<6", "uvloop==0.23.0"],
    "celery": ["celery[redis]==5.7.0", "redis[hiredis]>=6.4"],
}
#: The distributions whose installed versions the report names.
REPORTED = {
    "dramatiq": ("dramatiq", "redis", "hiredis"),
    "saq": ("saq", "redis", "hiredis", "uvloop"),
    "arq": ("arq", "redis", "hiredis", "uvloop"),
    "celery": ("celery", "kombu", "redis", "hiredis"),
}
MARKER = "dualplane-peer-env.json"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "dualplane-peers" if base else Path(tempfile.gettempdir()) / "dualplane-peers"


def find_python() -> str:
    """A Python 3.11 for the peers' environments: python3.11 on PATH, else this interpreter."""
    return shutil.which("python3.11") or sys.executable


def env_dir(cache: Path, peer: str, python: str) -> Path:
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([REQUIREMENTS[peer], version]).encode()).hexdigest()[:12]
    return cache / f"{peer}-{key}"


def ensure(peer: str, cache: Path, *, fresh: bool = False, python: str | None = None) -> tuple[Path, dict[str, str]]:
    """The peer's environment (built if missing or ``fresh``) and its installed versions."""
    python = python or find_python()
    root = env_dir(cache, peer, python)
    marker = root / MARKER
    if fresh and root.exists():
        shutil.rmtree(root)
    if not marker.exists():
        if root.exists():
            shutil.rmtree(root)  # a build that did not finish
        cache.mkdir(parents=True, exist_ok=True)
        print(f"  building the {peer} environment in {root} ...", flush=True)
        subprocess.run([python, "-m", "venv", str(root)], check=True)
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *REQUIREMENTS[peer]], check=True)
        versions = installed(root, REPORTED[peer])
        marker.write_text(json.dumps({"requirements": REQUIREMENTS[peer], "versions": versions}))
    return root, json.loads(marker.read_text())["versions"]


def installed(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(root / "bin" / "python"), "-c", code, *names], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


if __name__ == "__main__":  # build them all: python bench/peers/envs.py [--fresh]
    for name in REQUIREMENTS:
        print(name, ensure(name, default_cache(), fresh="--fresh" in sys.argv))
