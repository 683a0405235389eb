import pytest

from pipedecode.errors import InsufficientMemoryError
from pipedecode.models import model_shape
from pipedecode.planner.problem import DEFAULT_MEMORY_UTILIZATION
from pipedecode.profiles import load_profile
from pipedecode.sim.layout import (pipeline_layout, replicas_for, split_layers,
                                   tensor_layout)

H200 = load_profile("h200")


def test_the_last_stage_takes_fewer_layers_when_the_head_is_costly():
    # 32 layers of 1 us, a 2.4 us head: 17 + 15 (slowest 17) beats 16 + 16 (18.4) and
    # 18 + 14 (18)
    assert split_layers(32, 2, 1.0, 2.4) == (17, 15)
    assert split_layers(32, 4, 1.0, 0.0) == (8, 8, 8, 8)
    assert split_layers(10, 1, 1.0, 5.0) == (10,)


def test_deep_pipelines_hold_one_or_two_layers_a_stage():
    layers = split_layers(80, 64, 1.0, 0.5)
    assert len(layers) == 64 and sum(layers) == 80 and max(layers) == 2 and min(layers) == 1
    with pytest.raises(ValueError, match="cannot fill 33 stages"):
        split_layers(32, 33, 1.0, 0.0)


def test_llama_70b_does_not_fit_one_gpu_and_the_reason_says_so():
    with pytest.raises(InsufficientMemoryError, match="llama-3-70b: pipeline stage 0 of 1"):
        pipeline_layout(model_shape("llama-3-70b"), H200, 1, layer_us=1.0, head_us=1.0)


def test_stages_hold_their_weights_and_the_tightest_stage_sizes_the_block_pool():
    m = model_shape("llama-3-70b")
    lay = pipeline_layout(m, H200, 2, layer_us=1.0, head_us=0.0)
    table = m.vocab_size * m.hidden_size * m.dtype_bytes
    assert lay.layers == (40, 40)
    assert lay.weight_bytes == (40 * m.weight_bytes_per_layer() + table,) * 2
    assert sum(lay.weight_bytes) == m.weight_bytes()
    usable = int(H200.memory_bytes * DEFAULT_MEMORY_UTILIZATION)
    block_bytes = 16 * 40 * m.kv_bytes_per_token() // m.num_layers
    assert lay.num_blocks == (usable - lay.weight_bytes[0]) // block_bytes


def test_tensor_parallel_splits_heads_and_replicates_kv_heads_beyond_their_count():
    m = model_shape("llama-3-8b")                     # 32 heads, 8 KV heads
    assert tensor_layout(m, H200, 4).kv_heads_per_gpu == 2
    wide = tensor_layout(m, H200, 16)
    assert wide.kv_heads_per_gpu == 1 and wide.weight_bytes_per_gpu == -(-m.weight_bytes() // 16)
    with pytest.raises(ValueError, match="cannot be split over 64 GPUs"):
        tensor_layout(m, H200, 64)


def test_more_gpus_than_a_replica_takes_become_data_parallel_replicas():
    assert replicas_for(64, 32) == (2, 32)
    assert replicas_for(64, 80) == (1, 64)
    assert replicas_for(48, 32) == (2, 24)
    assert replicas_for(1, 32) == (1, 1)
