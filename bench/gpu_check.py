"""GPU check: every GPU task once at full size, through a real worker and directly, per dtype.

    bench/gpu_check.sh                          # a CUDA host: full-size models, fp16 and bf16
    bench/gpu_check.sh --tiny --device cpu      # anywhere: the same path on the tiny models

For each dtype (``--dtypes``, default ``float16,bfloat16`` on CUDA) a fresh worker process
(``bench/gpu_check_worker.py``: ``dualplane worker`` plus the benchmark's ``bench_direct`` and a
``bench_vram`` task) runs, per task, in this order:

1. a job through the control plane (cold: the model is downloaded from the object store and
   loaded; ``model_load_s`` from the node's output);
2. the DIRECT call: the pipeline called as a user's script calls it (``bench/gpu_tasks.py``'s
   ``direct_*``), inside the same worker process on its warm model, output encoding included;
3. the same job again (warm: the second job's ``model_load_s`` should be 0), timed end to end.

It prints the worker's overhead (warm job e2e against direct), the warm and cold load times, the
peak CUDA memory (``torch.cuda.max_memory_allocated`` in the worker, reset before each job) of
the warm job and of the cold one (load included), and whether the weights were real.

Weights: a registry name whose ``models/<name>/`` manifest in the object store says "real"
(``dualplane models pull``; the store of S3_ENDPOINT when it is set) is used as is, and so is a
directory ``--real-dir DIR/<name>`` (uploaded as real into the check's store). Every other model
is built here with RANDOM weights in the full-size configuration of the real checkpoint
(``gpu_tasks.FULL_BUILDERS``: musicgen-small, SD 1.5, the AnimateDiff motion adapter, SpeechT5,
HiFi-GAN) and uploaded under ``gpu-check/`` — never over ``models/<name>/``. Timing and memory
are those of the real sizes; the outputs are noise, and the report says so for each task.

Redis and SeaweedFS: REDIS_URL / S3_ENDPOINT when set, else started here in a temporary
directory (as ``dualplane up`` does) and stopped at the end. ``--budget-s`` (480) is the time the
whole check should fit in; the report says whether it did. Exit 0 when every job succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gpu_check_worker  # bench/ is this script's directory
import gpu_direct
import gpu_tasks

from dualplane.cli.planes import run_async
from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.devstack.services import start_redis, start_s3
from dualplane.ml.model_store import MANIFEST, ModelRegistry, upload_model_dir, weights_of

#: Job sizes. "full": what the issue names (AnimateDiff 16 frames at 512x512) at step counts that
#: keep the whole check, both dtypes, under 8 minutes on one data-centre GPU. "tiny": the tiny
#: models, each job well under a second on a CPU.
JOBS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "music": {"duration_s": 8.0},
        "video": {"num_frames": 16, "width": 512, "height": 512, "steps": 20},
        "lora": {"steps": 30, "resolution": 512},
        "voice": {"steps": 20},
        "speak": {"minlenratio": 4.0, "maxlenratio": 4.0},
    },
    "tiny": {
        "music": {"duration_s": 2.0},
        "video": {"num_frames": 4, "width": 32, "height": 32, "steps": 2},
        "lora": {"steps": 4, "resolution": 32},
        "voice": {"steps": 10},
        "speak": {"minlenratio": 4.0, "maxlenratio": 4.0},
    },
}
#: The prefix random builds go under, per size: never the registry's own ``models/<name>/``.
RANDOM_PREFIX = "gpu-check"
WORKER_ID = "gpu-check-worker"


@dataclass
class Row:
    """One task at one dtype."""

    task: str
    dtype: str
    weights: str
    sizes: str = ""
    direct_s: float | None = None
    e2e_s: float | None = None
    cold_e2e_s: float | None = None
    cold_load_s: float | None = None
    warm_load_s: float | None = None
    peak_warm: int | None = None
    peak_cold: int | None = None
    error: str | None = None


# -- models ---------------------------------------------------------------------------------------


async def real_weights(store: ArtifactStore, name: str) -> bool:
    """Whether ``models/<name>/`` holds a manifest that says its weights are real."""
    try:
        return weights_of(json.loads(await store.get(f"models/{name}/{MANIFEST}"))) == "real"
    except Exception:  # absent or unreadable: build random ones
        return False


async def provide_models(store: ArtifactStore, names: list[str], size: str, real_dir: Path | None,
                         build_root: Path) -> dict[str, tuple[str, str]]:
    """name → (object-store prefix, "real" | "random"): real weights where there are some, random
    ones of the real sizes built and uploaded for the rest."""
    from dualplane.ml.tiny import BUILDERS

    builders = BUILDERS if size == "tiny" else gpu_tasks.FULL_BUILDERS
    await store.ensure_bucket()
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        local = real_dir / name if real_dir is not None else None
        if local is not None and local.is_dir():
            await upload_model_dir(store, name, local, weights="real", origin=f"dir:{local.resolve()}")
            out[name] = (f"models/{name}", "real")
            print(f"  model {name}: REAL weights from {local}", flush=True)
            continue
        if await real_weights(store, name):
            out[name] = (f"models/{name}", "real")
            print(f"  model {name}: REAL weights already in the store (models/{name}/)", flush=True)
            continue
        started = time.perf_counter()
        target = build_root / name
        target.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(builders[name], target)
        prefix = f"{RANDOM_PREFIX}/{size}/{name}"
        await upload_model_dir(store, name, target, prefix=prefix, weights="random", origin=f"gpu-check:{size}")
        shutil.rmtree(target, ignore_errors=True)
        out[name] = (prefix, "random")
        print(f"  model {name}: RANDOM weights, {size} configuration (built and uploaded in "
              f"{time.perf_counter() - started:.1f} s): timing only, the output is noise", flush=True)
    return out


def write_registry(path: Path, models: dict[str, tuple[str, str]], dtype: str) -> Path:
    """A models.toml with the packaged kinds, the check's prefixes and ``dtype`` forced."""
    packaged = ModelRegistry.load()
    lines = [f'[models.{name}]\nkind = "{packaged.get(name).kind}"\nsource = "s3:{prefix}"\ndtype = "{dtype}"\n'
             for name, (prefix, _) in models.items()]
    path.write_text("\n".join(lines))
    return path


# -- the worker --------------------------------------------------------------------------------------


def start_worker(settings: Settings, registry_path: Path, cache_dir: Path, log_path: Path,
                 device: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=settings.redis_url or "", S3_ENDPOINT=settings.s3_endpoint or "",
               S3_ACCESS_KEY=settings.s3_access_key or "", S3_SECRET_KEY=settings.s3_secret_key or "",
               S3_BUCKET=settings.s3_bucket, DUALPLANE_KEY_PREFIX=settings.key_prefix,
               DUALPLANE_CONCURRENCY="1", DUALPLANE_WORKER_ID=WORKER_ID,
               DUALPLANE_WORKER_PORT="0", DUALPLANE_LOG_LEVEL="WARNING", DUALPLANE_MODELS_CONFIG=str(registry_path),
               DUALPLANE_MODEL_CACHE_DIR=str(cache_dir))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the worker picks CUDA whenever it sees one
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("gpu_check_worker.py"))], env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(worker: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def wait_for_worker(plane: ControlPlane, worker: subprocess.Popen[bytes], log_path: Path,
                          timeout_s: float = 120.0) -> dict[str, Any]:
    """The worker's capability manifest once it is published (it consumes from then on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for raw in await plane.bridge.live_workers():
            manifest = json.loads(raw)
            if manifest["worker_id"] == WORKER_ID:
                return manifest
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}):\n{gpu_tasks._tail(log_path)}")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker did not start in {timeout_s} s:\n{gpu_tasks._tail(log_path)}")


# -- one dtype -----------------------------------------------------------------------------------------


async def check_task(name: str, size: str, dtype: str, weights: str, plane: ControlPlane, store: ArtifactStore,
                     worker: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> Row:
    bench = gpu_tasks.BENCHES[name]
    row = Row(bench.task, dtype, weights)
    blobs: dict[str, bytes] = {}
    params = await gpu_tasks.prepare_inputs(name, "tiny" if size == "tiny" else "full", store, blobs)
    params.update(JOBS[size][name])
    if name == "lora":
        params["checkpoint_every"] = params["steps"]  # no mid-run checkpoint: time the training
    row.sizes = gpu_tasks.describe(name, params)
    vram = dataclasses.replace(bench, task="bench_vram")
    direct = dataclasses.replace(bench, task="bench_direct")

    async def job(b: gpu_tasks.Bench, p: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
        return await gpu_tasks.via_worker(plane, b, p, timeout_s, worker, log_path)

    try:
        await job(vram, {"action": "reset"})
        row.cold_e2e_s, _, out = await job(bench, params)
        row.cold_load_s = out.get("model_load_s")
        row.peak_cold = (await job(vram, {"action": "read"}))[2]["peak_bytes"]
        measured = gpu_direct.Direct(**(await job(direct, {"bench": name, "params": params,
                                                          "inputs": sorted(blobs)}))[2])
        row.direct_s = measured.core_s + measured.encode_s
        await job(vram, {"action": "reset"})
        row.e2e_s, _, out = await job(bench, params)
        row.warm_load_s = out.get("model_load_s")
        row.peak_warm = (await job(vram, {"action": "read"}))[2]["peak_bytes"]
    except RuntimeError as exc:  # a failed job: reported, and the other tasks still run
        row.error = " ".join(str(exc).split())[:300]
    finally:
        with contextlib.suppress(RuntimeError):
            await job(vram, {"action": "free"})  # this task's models out of VRAM before the next one's
    return row


async def check_dtype(dtype: str, args: argparse.Namespace, settings: Settings, models: dict[str, tuple[str, str]],
                      plane: ControlPlane, store: ArtifactStore, tmp: Path) -> list[Row]:
    registry_path = write_registry(tmp / f"models-{dtype}.toml", models, dtype)
    log_path = tmp / f"worker-{dtype}.log"
    started = time.perf_counter()
    rows = []
    with running(start_worker(settings, registry_path, tmp / f"cache-{dtype}", log_path, args.device)) as worker:
        manifest = await wait_for_worker(plane, worker, log_path)
        published = {m["name"]: m["weights"] for m in manifest.get("models", [])}
        print(f"{dtype}: worker up in {time.perf_counter() - started:.1f} s on {manifest['device']} "
              f"({manifest.get('device_name') or 'no GPU'}); it publishes weights {published}", flush=True)
        for name in args.tasks:
            weights = "+".join(sorted({models[m][1] for m in gpu_tasks.BENCHES[name].models}))
            row = await check_task(name, args.size, dtype, weights, plane, store, worker, log_path, args.timeout)
            print(f"  {row.task}: {'FAILED ' + row.error if row.error else 'ok'}", flush=True)
            rows.append(row)
    return rows


# -- the report ---------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def report(rows: list[Row], elapsed_s: float, budget_s: float, device: str, size: str) -> None:
    table = [("task", "dtype", "weights", "job", "direct s", "worker s", "overhead", "cold load s",
              "warm load s", "peak GiB", "peak+load GiB")]
    for r in rows:
        over = f"{r.e2e_s / r.direct_s - 1:+.1%} ({(r.e2e_s - r.direct_s) * 1e3:+.0f} ms)" \
            if r.e2e_s is not None and r.direct_s else "-"
        weights = r.weights.upper() if r.weights != "real" else r.weights
        table.append((r.task, r.dtype, weights, r.sizes, _s(r.direct_s), _s(r.e2e_s), over, _s(r.cold_load_s),
                      _s(r.warm_load_s), _gib(r.peak_warm), _gib(r.peak_cold)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print()
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.error:
            print(f"FAILED {r.task} ({r.dtype}): {r.error}")
    if any(r.weights != "real" for r in rows):
        sizes = "the tiny test models" if size == "tiny" else "models of the real sizes, so their timing and memory are the real ones"
        print(f"RANDOM weights: those tasks ran on random-initialised {sizes}; their outputs are noise "
              f"(real weights: dualplane models pull NAME --from-dir DIR, or --real-dir here)")
    if device == "cpu":
        print("device cpu: no CUDA memory figures (n/a); this run checks the path, not GPU performance")
    verdict = "within" if elapsed_s <= budget_s else "OVER"
    print(f"total {elapsed_s:.0f} s, {verdict} the {budget_s:.0f} s budget. overhead = warm job end to end "
          f"(submit to final event) / direct call - 1; warm load = the second job's model_load_s; peak = "
          f"max_memory_allocated during the warm job, peak+load during the cold one")


# -- main ---------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="dp-gpucheck-"))
    env = Settings()
    try:
        with contextlib.ExitStack() as stack:
            redis_url = env.redis_url or stack.enter_context(start_redis(tmp / "redis")).url
            s3 = {"s3_endpoint": env.s3_endpoint, "s3_access_key": env.s3_access_key,
                  "s3_secret_key": env.s3_secret_key, "s3_bucket": env.s3_bucket}
            if not env.s3_endpoint:
                server = stack.enter_context(start_s3(tmp / "s3"))
                s3 = {"s3_endpoint": server.endpoint, "s3_access_key": server.access_key,
                      "s3_secret_key": server.secret_key, "s3_bucket": "dp-gpucheck"}
            print(f"redis {redis_url}; object store {s3['s3_endpoint']} bucket {s3['s3_bucket']}", flush=True)
            settings = Settings(redis_url=redis_url, key_prefix=f"gpucheck-{os.getpid()}:", **s3)
            store = store_from_settings(settings.store)
            assert store is not None
            needed = list(dict.fromkeys(m for name in args.tasks for m in gpu_tasks.BENCHES[name].models))
            models = await provide_models(store, needed, args.size, args.real_dir, tmp / "build")
            plane = ControlPlane(settings, registry=gpu_check_worker.registry())
            await plane.start()
            try:
                return [row for dtype in args.dtypes
                        for row in await check_dtype(dtype, args, settings, models, plane, store, tmp)]
            finally:
                await plane.stop(1.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny models and jobs (a dry run of the path)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtypes", help="comma-separated (default float16,bfloat16 on CUDA, float32,bfloat16 "
                                         "on CPU, where float16 kernels are missing)")
    parser.add_argument("--tasks", default=",".join(gpu_tasks.ALL_TASKS),
                        help="from music,video,lora,voice (train_voice),speak (synthesize_voice)")
    parser.add_argument("--real-dir", type=Path, help="real checkpoints in DIR/<registry name>/")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one job may take")
    args = parser.parse_args()
    args.size = "tiny" if args.tiny else "full"
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.tasks) - set(gpu_tasks.ALL_TASKS))
    if unknown or not args.tasks:
        parser.error(f"unknown tasks {unknown}; choose from {','.join(gpu_tasks.ALL_TASKS)}")
    args.dtypes = (args.dtypes or ("float16,bfloat16" if args.device == "cuda" else "float32,bfloat16")).split(",")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: the direct builds stay off the GPU too
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; on a CPU run `bench/gpu_check.sh --tiny --device cpu`",
              file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    print(f"gpu check: {args.size} models, device {args.device} ({gpu}), dtypes {','.join(args.dtypes)}, "
          f"torch {torch.__version__}, tasks {','.join(args.tasks)}", flush=True)
    started = time.perf_counter()
    rows = run_async(run(args))
    report(rows, time.perf_counter() - started, args.budget_s, args.device, args.size)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
