import pytest
import torch

from pipedecode.models import build_model
from pipedecode.runtime.coresident import (CoresidentUnavailable, attention_unavailable,
                                           open_coresident_streams)
from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.weights import pack_hf_model


@pytest.fixture(scope="module")
def weights():
    return pack_hf_model(build_model("tiny-llama", seed=3))


def test_the_tma_attention_check_reads_the_steps_own_buffers(weights):
    why = attention_unavailable(DecodeStep(weights, 2, 16))   # float32: not the kernel's dtype
    assert why is not None and "bf16 or fp16" in why
    half = pack_hf_model(build_model("tiny-llama", seed=3, dtype=torch.bfloat16))
    paged = PagedKVCache.for_weights(half, num_blocks=8, block_size=8)
    why = attention_unavailable(DecodeStep(half, 2, 16, paged=paged))   # bf16 passes, through
    assert why == "the TMA decode attention supports head_dim 64 and 128, got 16"   # the pool


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_coresident_streams_are_refused_with_the_reason(weights):
    with pytest.raises(CoresidentUnavailable, match="no CUDA device.*Hopper"):
        open_coresident_streams(DecodeStep(weights, 2, 16), 65536)
