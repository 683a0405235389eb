"""Profile measurement: the table building with a fake timer."""

import pytest

from pipedecode.profiles import measure
from pipedecode.profiles.schema import DeviceProfile

FACTS = measure.DeviceFacts("fakegpu", "a fake GPU", 132, 8, 8, 80 * 2 ** 30)
SPEC = measure.MeasureSpec(models=("llama-3-8b",), tokens=(64, 512), sm_counts=(30, 64, 200),
                           attention_batches=(8,), attention_contexts=(256,),
                           bandwidth_sm_counts=(16, 132), corun_memory_sms=(48, 128),
                           coresident_points=((256, 512), (512, 256)),
                           coresident_smem_bytes=(49152, 65536))


class FakeTimer:
    """Roofline-like numbers from the arguments, so the tables can be checked exactly."""

    def __init__(self):
        self.calls = []

    def granted_sms(self, sms):
        return min(132, -(-sms // 8) * 8)

    def gemm_us(self, tokens, n, k, sms):
        self.calls.append(("gemm", sms))
        return 2 * tokens * n * k / (self.granted_sms(sms) * 6e6)

    def attention_us(self, batch, context, heads, kv_heads, head_dim, sms):
        return 4 * batch * context * kv_heads * head_dim / (self.granted_sms(sms) * 75e3)

    def corun_us(self, memory_sms, compute_sms, model, tokens, context):
        return 100.0, 80.0, 150.0

    def coresident_us(self, model, tokens, context, smem_bytes):
        self.calls.append(("coresident", model, tokens, context, smem_bytes))
        attention = tokens * context / 1000.0
        return attention, 2.0 * tokens, 1.5 * tokens + attention, attention * 0.9, 1.5 * tokens

    def stream_bytes_per_s(self, sms):
        return min(3.0e12, 75e9 * self.granted_sms(sms))

    def peak_flops_per_s(self):
        return 790e12

    def copy_bytes_per_s(self):
        return 3.0e12

    def launch_us(self):
        return 2.5


def test_tables_cover_the_plan_with_granted_counts():
    profile = measure.build_profile(FACTS, FakeTimer(), SPEC)
    shapes = measure.gemm_shapes(["llama-3-8b"])
    assert len(profile.gemm_latency) == len(shapes) * 2 * 3
    assert {p.sm_count for p in profile.gemm_latency} == {32, 64, 132}   # 30 -> 32, 200 -> 132
    assert {(p.n, p.k) for p in profile.gemm_latency} == set(shapes)
    assert {(p.num_heads, p.num_kv_heads, p.head_dim) for p in profile.attention_latency} == \
        {(32, 8, 128)}
    assert profile.bandwidth_by_sms == ((16, 1.2e12), (132, 3.0e12))
    assert profile.per_sm_bytes_per_s == pytest.approx(75e9)
    assert profile.corun_slowdown == pytest.approx(1.5)
    assert len(profile.corun_samples) == 1        # 128 + 8 > 132: no room for the compute side
    assert profile.corun_samples[0].compute_sms == 132 - 48
    assert profile.source == "measured" and profile.launch_overhead_us == 2.5


def test_profile_round_trips_through_the_schema():
    profile = measure.build_profile(FACTS, FakeTimer(), SPEC)
    again = DeviceProfile.from_json(profile.to_json())
    assert again == profile


def test_progress_sees_every_step():
    seen = []

    def progress(steps):
        for step in steps:
            seen.append(step[0])
            yield step

    measure.build_profile(FACTS, FakeTimer(), SPEC, progress=progress)
    assert seen[:3] == ["peak", "copy", "launch"] and seen.count("corun") == 1
    assert len(seen) == len(measure.plan_steps(SPEC, FACTS))


def test_attention_steps_skip_caches_over_the_byte_cap():
    spec = measure.MeasureSpec(models=("llama-2-7b",), attention_batches=(1, 4096),
                               attention_contexts=(4096,), attention_max_bytes=2 ** 30)
    batches = {s[1] for s in measure.plan_steps(spec, FACTS) if s[0] == "attention"}
    assert batches == {1}


def test_spec_must_measure_something():
    with pytest.raises(ValueError):
        measure.MeasureSpec(tokens=())


def test_coresident_pairs_are_measured_at_each_point_and_budget():
    timer = FakeTimer()
    profile = measure.build_profile(FACTS, timer, SPEC)
    assert [c[1:] for c in timer.calls if c[0] == "coresident"] == [
        ("llama-3-8b", 256, 512, 49152), ("llama-3-8b", 512, 256, 49152),
        ("llama-3-8b", 256, 512, 65536), ("llama-3-8b", 512, 256, 65536)]
    first = profile.coresident_samples[0]
    assert (first.tokens, first.context_len, first.attention_smem_bytes) == (256, 512, 49152)
    assert (first.attention_alone_us, first.compute_alone_us, first.together_us) == \
        (131.072, 512.0, 384 + 131.072)
    assert first.attention_sequential_us == pytest.approx(0.9 * 131.072)


def test_a_gpu_that_cannot_run_coresident_mode_gets_no_samples_and_says_why():
    import dataclasses

    facts = dataclasses.replace(FACTS, coresident_unavailable="not a Hopper GPU")
    timer = FakeTimer()
    profile = measure.build_profile(facts, timer, SPEC)
    assert profile.coresident_samples == () and "not a Hopper GPU" in profile.description
    assert not [c for c in timer.calls if c[0] == "coresident"]


def test_the_default_points_are_the_grids_overlapped_micro_batches():
    assert measure.MeasureSpec().coresident_points == measure.MeasureSpec.quick().coresident_points
    assert min(t for t, _ in measure.CORESIDENT_POINTS) >= 157   # the H200's fewest (cost.py)
