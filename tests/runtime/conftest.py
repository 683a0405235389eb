"""Runtime tests: run the Triton kernels in the CPU interpreter where there is no CUDA GPU.

TRITON_INTERPRET must be set before triton compiles anything; the kernel modules import
triton lazily, so setting it here, at collection, is early enough.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else CPU tensors in the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN anywhere gives inf."""
    a, e = actual.double(), expected.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - e).norm() / e.norm()).item()


@pytest.fixture
def rel_err():
    return rel_error
