"""The analytic Hopper profiles against the probes in the shared HOPPER-FACTS (2026-11-21)."""

import pytest

from pipedecode.models import ModelShape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles import gemm_latency_us
from pipedecode.profiles.analytic import BUILTIN

LLAMA3_8B = ModelShape(name="llama-3-8b", family="llama", hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       head_dim=128, vocab_size=128256)
SMS = (132, 100, 84, 64, 48, 32)
# Llama-3-8B layer, 512-token micro-batch, 1024 context, milliseconds (HOPPER-FACTS 1 and 2b)
CUBLAS_MS = {"h100": (0.310, 0.513, 0.502, 0.530, 0.734, 1.047),
             "h200": (0.313, 0.557, 0.505, 0.599, 0.756, 1.118)}
SDPA_MS = {"h100": (0.703, 0.701, 0.705, 0.804, 1.079, 1.626),
           "h200": (0.487, 0.548, 0.613, 0.831, 1.110, 1.655)}


@pytest.mark.parametrize("device", ["h100", "h200"])
def test_gemm_model_within_20_percent_of_cublas(device):
    profile = BUILTIN[device]
    for sms, measured in zip(SMS, CUBLAS_MS[device]):
        model_ms = sum(gemm_latency_us(profile, 512, s.n, s.k, sms)
                       for s in LLAMA3_8B.linears()) / 1e3
        assert model_ms == pytest.approx(measured, rel=0.2), sms


@pytest.mark.parametrize("device", ["h100", "h200"])
def test_attention_model_is_a_bandwidth_bound_of_sdpa(device):
    cost = CostModel(LLAMA3_8B, BUILTIN[device])
    for sms, measured in zip(SMS, SDPA_MS[device]):
        model_ms = cost.attention_us(512, 512 * 1024, sms) / 1e3
        assert model_ms <= measured * 1.05
    # on all SMs SDPA reaches the bandwidth: the bound is tight there
    full_ms = cost.attention_us(512, 512 * 1024, 132) / 1e3
    assert full_ms == pytest.approx(SDPA_MS[device][0], rel=0.05)


def test_every_builtin_profile_round_trips_and_is_analytic():
    from pipedecode.profiles import DeviceProfile

    for profile in BUILTIN.values():
        assert profile.source == "analytic" and profile.corun_slowdown == 1.0
        assert DeviceProfile.from_json(profile.to_json()) == profile
