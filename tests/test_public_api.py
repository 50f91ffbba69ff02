"""The public names of ``dualplane`` resolve, and importing the package stays cheap."""

import importlib
import subprocess
import sys

import dualplane

#: What ``import dualplane`` must not bring in: each costs from tens of ms to seconds.
HEAVY = ("torch", "diffusers", "transformers", "fastapi", "redis", "httpx", "pydantic", "langgraph")


def test_every_public_name_resolves_to_what_its_module_defines():
    assert sorted(dualplane.__all__) == sorted(set(dualplane.__all__)), "a name listed twice"
    assert sorted(dualplane.__all__) == sorted(dualplane._SOURCES)
    for name in dualplane.__all__:
        assert getattr(dualplane, name) is getattr(importlib.import_module(dualplane._SOURCES[name]), name)
    assert issubclass(dualplane.UnknownJob, dualplane.NotFound)
    assert issubclass(dualplane.NotFound, dualplane.DualplaneError)
    assert set(dir(dualplane)) >= set(dualplane.__all__)


def test_an_unknown_name_is_an_attribute_error():
    try:
        dualplane.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_import_dualplane_imports_no_heavy_library():
    code = f"import sys, dualplane; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_task_written_with_the_public_names_registers():
    code = """
from pydantic import BaseModel
from dualplane import NO_RETRY, Retry, TaskContext, task

class Params(BaseModel):
    text: str

@task("shout", plane="python", params=Params, retry=Retry(max_attempts=2))
def shout(ctx: TaskContext, p: Params) -> dict:
    return {"text": p.text.upper()}

spec = shout.__task_spec__
assert (spec.name, spec.plane, spec.retry.max_attempts) == ("shout", "python", 2), spec
assert NO_RETRY.max_attempts == 1
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_version_is_the_one_pyproject_declares():
    import tomllib
    from pathlib import Path

    import dualplane

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert dualplane.__version__ == pyproject["project"]["version"]
