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


def _coresident_profile(llama8b):
    """BUILTIN h200 with two hand-made co-resident samples of Llama-3-8B (64 KiB): at 256
    tokens x 512 keys (attention 1.1x, compute 1.25x the model's whole-GPU time, penalty 0.2)
    and at 512 x 512 (1.05x, 1.15x, penalty 0.4)."""
    import dataclasses

    from pipedecode.profiles import CoresidentSample

    base = BUILTIN["h200"]
    cost = CostModel(llama8b, base)
    samples = []
    for tokens, fa, fc, penalty in ((256, 1.1, 1.25, 0.2), (512, 1.05, 1.15, 0.4)):
        a = cost.attention_us(tokens, tokens * 512, 132) * fa
        c = cost.linear_us(tokens, 132) * fc
        samples.append(CoresidentSample("llama-3-8b", tokens, 512, 65536, a, c,
                                        max(a, c) + penalty * min(a, c), 1.0, 1.0))
    return dataclasses.replace(base, coresident_samples=tuple(samples))


def test_a_coresident_phase_matches_a_hand_computation(llama8b):
    profile = _coresident_profile(llama8b)
    cost, plain = CostModel(llama8b, profile), CostModel(llama8b, BUILTIN["h200"])
    # at a measured point the phase is the sample's together time
    (s256, s512) = profile.coresident_samples
    phases = cost.coresident_phases_us([(256, 256 * 512)] * 2, 65536)
    assert phases == pytest.approx([s256.together_us] * 2)
    # between the samples (384 tokens x 1024 keys): factors and penalty interpolated halfway
    fa, fc, penalty = (1.1 + 1.05) / 2, (1.25 + 1.15) / 2, (0.2 + 0.4) / 2
    a = plain.attention_us(384, 384 * 1024, 132) * fa
    c = plain.linear_us(384, 132) * fc
    moved = plain.attention_bytes(384, 384 * 1024) + plain.linear_bytes(384)
    hand = max(max(a, c) + penalty * min(a, c), moved / profile.hbm_bytes_per_s * 1e6)
    assert cost.coresident_phases_us([(384, 384 * 1024)] * 2, 65536) == pytest.approx([hand] * 2)
    # the step: every layer's phases, then prologue, epilogue and both heads at compute speed
    fill = (plain.pre_attn_us(384, 132) + plain.post_attn_us(384, 132)
            + 2 * plain.head_us(384)) * fc
    assert cost.coresident_step_us([(384, 384 * 1024)] * 2, 65536) == pytest.approx(
        32 * 2 * hand + fill)
    with pytest.raises(KeyError):
        cost.coresident_phases_us([(384, 1024)] * 2, 49152)


def test_the_shared_hbm_floor_bounds_a_coresident_phase(llama8b):
    cost = CostModel(llama8b, _coresident_profile(llama8b))
    assert cost.coresident_phase_us(100.0, 200.0, 4.39e9, 65536, 256) == pytest.approx(1000.0)
    assert cost.coresident_phase_us(100.0, 200.0, 0.0, 65536, 256) == pytest.approx(220.0)


def test_the_sequential_steps_op_floor(llama8b):
    from pipedecode import counts

    cost = CostModel(llama8b, BUILTIN["h200"])
    for tokens, ctx in ((64, 512), (1024, 512)):
        assert cost.op_floor_us(tokens, tokens * ctx) >= cost.roofline_floor_us(tokens,
                                                                              tokens * ctx)
    # at 16 tokens every op is memory-bound: the op floor is all their bytes over the bandwidth
    m, t, kv = llama8b, 16, 16 * 512
    layer = (counts.pre_attn(m, t).counts() + counts.attention_stage(m, t, kv).counts()
             + counts.post_attn(m, t).counts()).bytes_moved
    head = counts.gemm(t, m.vocab_size, m.hidden_size, 2).bytes_moved + \
        counts.head_norm_bytes(m, t)
    assert cost.op_floor_us(t, kv) == pytest.approx((32 * layer + head) / 4.39e12 * 1e6)


def test_the_fewest_micro_batch_tokens_follow_the_ridge():
    from pipedecode.planner.cost import min_micro_batch_tokens
    from pipedecode.profiles import load_profile

    assert min_micro_batch_tokens(load_profile("h200")) == 157     # 690 TFLOP/s, 4.40 TB/s
    assert min_micro_batch_tokens(load_profile("h100")) == 230     # 709 TFLOP/s, 3.09 TB/s
    assert min_micro_batch_tokens(BUILTIN["h100"], dtype_bytes=1) == 519
