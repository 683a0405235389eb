"""What every benchmark result records and where it goes: `<out>/<benchmark>_<gpu>.json` and `.md`.

Owns the environment of a result (GPU and its key, date, git commit, library versions), the
file names and the first lines of each markdown (which name the GPU, the date and the commit).
Knows nothing of what a benchmark measures. Importable without a GPU.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def git_commit() -> str:
    """The checkout's commit (short hash, "-dirty" with uncommitted changes to tracked files);
    PIPEDECODE_COMMIT wins (a copy of the tree without .git); "unknown" where neither says."""
    if os.environ.get("PIPEDECODE_COMMIT"):
        return os.environ["PIPEDECODE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(gpu_name: str | None = None) -> dict:
    """The fields every result opens with. gpu_name None: this process's CUDA device, or the
    CPU (benchmarks of the planner)."""
    from pipedecode.profiles.registry import gpu_key

    if gpu_name is None:
        import torch

        gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu_name, "gpu_key": "cpu" if gpu_name == "cpu" else gpu_key(gpu_name),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "commit": git_commit(), "torch": _version("torch"),
            "transformers": _version("transformers"), "triton": _version("triton")}


def heading(title: str, result: dict) -> list[str]:
    """The markdown's first lines: what, on which GPU, when, at which commit, with what."""
    versions = ", ".join(f"{name} {result[name]}" for name in ("torch", "transformers", "triton")
                         if result.get(name))
    return [f"# {title}: {result.get('gpu', 'unknown GPU')}", "",
            f"Measured {result.get('date', 'at an unknown date')} (UTC) at commit "
            f"{result.get('commit', 'unknown')}; {versions}.", ""]


def stem(out: str, benchmark: str, result: dict) -> str:
    return os.path.join(out, f"{benchmark}_{result.get('gpu_key', 'unknown')}")


def publish(out: str, benchmark: str, result: dict, markdown: str) -> str:
    """`write`, then print the markdown and where both files went."""
    path = write(out, benchmark, result, markdown)
    print(markdown)
    print(f"wrote {path}.json and {path}.md")
    return path


def write(out: str, benchmark: str, result: dict, markdown: str) -> str:
    """Write <out>/<benchmark>_<gpu>.json and .md; returns the path without the extension."""
    os.makedirs(out, exist_ok=True)
    path = stem(out, benchmark, result)
    with open(path + ".json", "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    with open(path + ".md", "w") as fh:
        fh.write(markdown)
    return path
