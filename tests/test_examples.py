"""The examples and the README's Python snippets run as written and say nothing misleading."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,argv", [
    ("compile_and_generate", ["--batch", "2", "--new-tokens", "4"]),
    ("generate_interleaved", ["--batch", "2", "--new-tokens", "4"]),
])
def test_example_runs_and_agrees(name, argv, capsys):
    assert _module(name).main(argv) == 0
    out = capsys.readouterr().out
    # float32 on the CPU: every path gives transformers' own tokens
    assert "identical: True" in out or ("100.0% of tokens equal" in out and
                                        "% of tokens equal" not in out.replace("100.0% of", ""))
    assert "tokens/s" in out
    if not torch.cuda.is_available():    # nothing different ran: no ratio may be printed
        assert "no speedup measured" in out
        assert "speedup of" not in out and not re.search(r"\(\d+\.\d+x\)", out)


def test_a_speedup_needs_two_different_modes_on_a_gpu():
    line = _module("generate_interleaved").speedup_line

    results = {"sequential": 100.0, "planned": 125.0}       # decode tokens/s
    interleaved = {"sequential": ("sequential", None), "planned": ("interleaved", None)}
    assert line(results, interleaved, cuda=True) == \
        "speedup of interleaved over sequential: 1.25x (both measured on this GPU)"
    guarded = {"sequential": ("sequential", None),
               "planned": ("sequential", "interleaving measured slower")}
    assert line(results, guarded, cuda=True) == ("no speedup measured: the planned run was "
                                                 "sequential too (interleaving measured slower)")
    assert line(results, interleaved, cuda=False).startswith("no speedup measured: on a CPU")


def _readme_snippet(which: str) -> str:
    """The Python block after a line starting with `which` ('Requests in, tokens out', 'On a
    CPU', 'On a GPU') in the README's 'Using it' section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"\n{which}\b.*?```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"README 'Using it' has no single Python block after {which!r}"
    return blocks[0]


def test_readme_engine_snippet_runs_as_written(capsys):
    exec(compile(_readme_snippet("Requests in, tokens out"), "README.md (engine snippet)",
                 "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines[:3]:          # tokens and why each request ended
        count, reason = line.split()
        assert 1 <= int(count) <= 12 and reason in ("stop", "length")
    assert lines[3].startswith("3 requests, 18 prompt + ") and "preemptions" in lines[3]


def test_readme_cpu_snippet_runs_as_written(capsys):
    exec(compile(_readme_snippet("On a CPU"), "README.md (CPU snippet)", "exec"), {})
    out = capsys.readouterr().out
    assert "graphs ran as stages; tokens as transformers': True" in out
    assert not out.startswith("0 graphs")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_readme_gpu_snippet_runs_as_written(capsys):
    exec(compile(_readme_snippet("On a GPU"), "README.md (GPU snippet)", "exec"), {})
    mode = capsys.readouterr().out.split()[0]
    assert mode in ("interleaved", "sequential")
