"""bench/gpu_check.sh runs here on the same path as on a CUDA host (`--tiny --device cpu`): its own
Redis and SeaweedFS, a worker process, a cold job, the direct call, a warm job, the report; real
weights given with --real-dir are uploaded as real and the worker publishes them so."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = [pytest.mark.ml, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALPLANE_", "REDIS_", "S3_"))}
    env["PYTHON"] = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else "python3"
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_tiny_cpu_check_runs_a_task_through_the_worker_and_directly_with_real_weights_where_given(
    tiny_models, tmp_path: Path
):
    real = tmp_path / "real"
    real.mkdir()
    (real / "speecht5-hifigan").symlink_to(tiny_models["speecht5-hifigan"], target_is_directory=True)

    done = check("--tiny", "--device", "cpu", "--tasks", "speak", "--dtypes", "float32", "--real-dir", str(real))

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "model speecht5-hifigan: REAL weights from" in out
    assert "model speecht5-tts: RANDOM weights, tiny configuration" in out
    assert "'speecht5-hifigan': 'real'" in out and "'speecht5-tts': 'random'" in out  # what the worker published
    row = next(line for line in out.splitlines() if line.startswith("synthesize_voice"))
    cells = row.split()
    assert cells[1:3] == ["float32", "RANDOM+REAL"]
    direct_s, worker_s = float(cells[8]), float(cells[9])
    assert direct_s > 0 and worker_s > 0
    assert re.search(r"[+-]\d+\.\d%", row)  # the overhead
    assert cells[-3] == "0.000"  # the second job found its models warm
    assert cells[-2:] == ["n/a", "n/a"]  # no CUDA memory on a CPU
    assert re.search(r"total \d+ s, (within|OVER) the 480 s budget", out)


def test_without_cuda_the_full_check_refuses_in_one_line():
    done = check("--tasks", "speak")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: no CUDA device visible")
