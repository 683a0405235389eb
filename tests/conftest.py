"""Fixtures shared by the tests: device profiles with known ridge points, a clean Dynamo."""

import pytest
import torch

from pipedecode.profiles.schema import DeviceProfile


def _profile(ridge_flops_per_byte: float) -> DeviceProfile:
    return DeviceProfile(name=f"ridge-{ridge_flops_per_byte:g}", sm_count=132, sm_granularity=8,
                         min_partition_sms=8, peak_flops_per_s=ridge_flops_per_byte * 1e12,
                         hbm_bytes_per_s=1e12, memory_bytes=80 << 30)


@pytest.fixture
def low_ridge() -> DeviceProfile:
    """Ridge 1 FLOP/B: tiny fp32 linears are memory-bound at batch 1, compute-bound at 64."""
    return _profile(1.0)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
