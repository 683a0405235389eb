"""The cuBLAS / Triton choice of `linear`: names, nearest measured point, forced paths."""

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import dispatch
from pipedecode.runtime.kernels._dispatch_data import MEASURED


def test_device_keys():
    assert dispatch.device_key("NVIDIA H100 80GB HBM3") == "h100"
    assert dispatch.device_key("NVIDIA H200") == "h100"          # same SMs: the H100 table
    assert dispatch.device_key("NVIDIA A100-SXM4-80GB") is None


def test_measured_points_pick_the_faster():
    rows = MEASURED["h100"]
    triton_row = next(r for r in rows if r[4] < r[5])
    cublas_row = next(r for r in rows if r[4] > r[5])
    assert dispatch.prefer_triton("h100", *triton_row[2:3], *triton_row[:2], triton_row[3])
    assert not dispatch.prefer_triton("h100", *cublas_row[2:3], *cublas_row[:2], cublas_row[3])
    assert not dispatch.prefer_triton(None, 512, 4096, 4096, 104)


def test_unmeasured_points_use_the_nearest():
    n, k, tokens, sms, t_us, c_us = next(r for r in MEASURED["h100"] if r[4] < r[5])
    # a few tokens and one SM off, a slightly different shape: same measured neighbour
    assert dispatch.prefer_triton("h100", tokens + 3, n + 64, k, sms + 1) is True


def test_forced_and_cpu_paths():
    x = torch.zeros(4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="impl"):
        kernels.linear(x, torch.zeros(5, 8, dtype=torch.bfloat16), impl="fast")
    assert kernels._gemm_path(x, 5, 8, "cublas", None) == "reference"
