"""The GPU timer behind `pipedecode profile`: a tiny measured profile on the GPU."""

import pytest
import torch

from pipedecode.profiles import measure
from pipedecode.profiles.schema import DeviceProfile

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_tiny_profile_is_measured_and_round_trips():
    from pipedecode.runtime.profile_gpu import CudaTimer

    timer = CudaTimer(reps=3, warmup=1)
    facts = timer.facts()
    spec = measure.MeasureSpec(models=("llama-3-8b",), tokens=(64,),
                               sm_counts=(32, facts.sm_count), attention_batches=(16,),
                               attention_contexts=(512,), bandwidth_sm_counts=(32, facts.sm_count),
                               corun_memory_sms=(48,) if timer.support else ())
    profile = measure.build_profile(facts, timer, spec)
    assert profile.source == "measured" and profile.sm_count == torch.cuda.get_device_properties(
        0).multi_processor_count
    assert all(p.latency_us > 0 for p in profile.gemm_latency + profile.attention_latency)
    # fewer SMs stream less
    assert profile.bandwidth_by_sms[0][1] < profile.bandwidth_by_sms[-1][1]
    assert DeviceProfile.from_json(profile.to_json()) == profile


def test_coresident_pairs_are_measured_beside_each_other():
    """One co-resident sample of Llama-3-8B (256 x 512 beside 256 rows): each side alone, both,
    and the sequential kernels; together can be no faster than the slower side alone would allow
    (a little noise aside) and no slower than the two one after the other plus their launches."""
    from pipedecode.runtime.profile_gpu import CudaTimer

    timer = CudaTimer(reps=3, warmup=1)
    facts = timer.facts()
    assert facts.coresident_unavailable is None, facts.coresident_unavailable
    spec = measure.MeasureSpec(models=("llama-3-8b",), tokens=(64,), sm_counts=(facts.sm_count,),
                               attention_batches=(16,), attention_contexts=(512,),
                               bandwidth_sm_counts=(facts.sm_count,), corun_memory_sms=(),
                               coresident_points=((256, 512),))
    profile = measure.build_profile(facts, timer, spec)
    (sample,) = profile.coresident_samples
    assert (sample.tokens, sample.context_len, sample.attention_smem_bytes) == (256, 512, 65536)
    alone = (sample.attention_alone_us, sample.compute_alone_us)
    assert 0.9 * max(alone) <= sample.together_us <= 1.2 * sum(alone)
    assert DeviceProfile.from_json(profile.to_json()) == profile
