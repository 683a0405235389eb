import pytest

from pipedecode.planner.cost import CostModel
from pipedecode.profiles import DeviceProfile
from pipedecode.profiles.analytic import BUILTIN


def test_sequential_step_is_the_sum_of_stages_on_all_sms(llama8b):
    cost = CostModel(llama8b, BUILTIN["h100"])
    sms = 132
    layer = cost.pre_attn_us(256, sms) + cost.attention_us(256, 256 * 1024, sms) \
        + cost.post_attn_us(256, sms)
    assert cost.sequential_step_us(256, 256 * 1024) == pytest.approx(32 * layer + cost.head_us(256))


def test_bytes_match_a_hand_count(llama8b):
    cost = CostModel(llama8b, BUILTIN["h100"])
    # one layer's weights: qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336
    weights = 2 * (6144 * 4096 + 4096 * 4096 + 28672 * 4096 + 4096 * 14336)
    assert cost.linear_bytes(0) == weights
    # K and V of one context token: 2 x 8 heads x 128 x 2 bytes
    assert cost.attention_bytes(0, 1) == 4096


def test_phase_charges_shared_bandwidth_and_corun_slowdown(llama8b):
    h100 = BUILTIN["h100"]
    cost = CostModel(llama8b, h100)
    # two small sides moving 3.08 GB: the shared-HBM floor (1000 us) wins
    assert cost.phase_us(100.0, 200.0, 3.08e9, 64) == pytest.approx(1000.0)
    slow = CostModel(llama8b, DeviceProfile(**{**h100.__dict__, "corun_slowdown": 1.7}))
    # the measured H100 case: 800 us beside 520 us took 1360 us
    assert slow.phase_us(800.0, 520.0, 0.0, 64) == pytest.approx(1360.0)


def test_roofline_floor_is_below_every_plan(llama8b):
    cost = CostModel(llama8b, BUILTIN["h200"])
    for tokens, ctx in ((64, 512), (512, 1024), (1024, 4096)):
        floor = cost.roofline_floor_us(tokens, tokens * ctx)
        assert floor < cost.sequential_step_us(tokens, tokens * ctx)
        half = [(tokens // 2, tokens // 2 * ctx)] * 2
        assert floor < cost.interleaved_step_us(half, 64)


def test_fewer_sms_are_slower_for_each_stage(llama8b):
    cost = CostModel(llama8b, BUILTIN["h100"])
    assert cost.attention_us(256, 256 * 2048, 32) > cost.attention_us(256, 256 * 2048, 132)
    assert cost.linear_us(256, 32) > cost.linear_us(256, 132)


def test_prefill_grows_with_prompt_tokens(llama8b):
    cost = CostModel(llama8b, BUILTIN["h100"])
    assert cost.prefill_us([]) == 0.0
    assert cost.prefill_us([2048]) > cost.prefill_us([1024]) > cost.prefill_us([128])
