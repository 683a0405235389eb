"""Every benchmark script imports without a GPU (its work is in main(), run on the GPU)."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in ROOT.glob("*.py")) + sorted(p for p in ROOT.glob("kernels/*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports(path):
    name = f"bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module           # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    assert module.__doc__, f"{path.name} opens with no docstring"
