import pytest
import torch

from pipedecode.models import build_model, model_shape
from pipedecode.runtime.kv_cache import PagedKVCache, packed_positions, slot_ids
from pipedecode.runtime.weights import pack_hf_model


def test_allocates_block_pools_per_layer():
    cache = PagedKVCache(3, 10, 16, 2, 32, dtype=torch.float32)
    assert len(cache.k) == len(cache.v) == cache.num_layers == 3
    assert all(t.shape == (10, 2, 16, 32) and t.dtype == torch.float32 for t in cache.k + cache.v)
    assert (cache.num_blocks, cache.block_size, cache.num_slots) == (10, 16, 160)
    assert len({t.data_ptr() for t in cache.k + cache.v}) == 6
    assert not any(t.any() for t in cache.k)             # zeros: the null block is finite
    assert cache.blocks_for_tokens(16) == 1 and cache.blocks_for_tokens(17) == 2


def test_for_weights_takes_the_model_layout():
    weights = pack_hf_model(build_model("tiny-llama-mha"))
    cache = PagedKVCache.for_weights(weights, 7, 8)
    assert (cache.num_layers, cache.num_kv_heads, cache.head_dim) == (2, 4, 16)
    assert cache.dtype == weights.dtype and cache.device == weights.device


def test_memory_arithmetic_at_llama3_8b():
    shape = model_shape("llama-3-8b")
    # 2 (K, V) x 32 layers x 8 heads x 16 positions x 128 x 2 bytes = 2 MiB per block
    assert PagedKVCache.bytes_per_block(shape, 16, torch.bfloat16) == 2 * 2 ** 20
    assert PagedKVCache.bytes_per_block(shape, 16, torch.float32, num_layers=2) == 2 ** 18
    assert PagedKVCache.blocks_for_memory(10 * 2 ** 20 + 5, shape, 16, torch.bfloat16) == 5
    assert PagedKVCache.blocks_for_memory(2 ** 20, shape, 16, torch.bfloat16) == 0
    with pytest.raises(ValueError, match="memory_bytes"):
        PagedKVCache.blocks_for_memory(-1, shape, 16, torch.bfloat16)


@pytest.mark.parametrize("bad", [dict(num_blocks=0), dict(block_size=-4), dict(head_dim=2.5)])
def test_rejects_bad_sizes(bad):
    args = dict(num_layers=1, num_blocks=4, block_size=16, num_kv_heads=2, head_dim=16) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        PagedKVCache(**args)


def test_wrap_shares_a_static_cache_as_one_block_per_row():
    keys = [torch.zeros(3, 2, 24, 16) for _ in range(2)]
    values = [torch.zeros(3, 2, 24, 16) for _ in range(2)]
    cache = PagedKVCache.wrap(keys, values)
    assert cache.k[1] is keys[1] and (cache.num_blocks, cache.block_size) == (3, 24)
    with pytest.raises(ValueError, match="as many"):
        PagedKVCache.wrap(keys, values[:1])
    with pytest.raises(ValueError, match="like the first"):
        PagedKVCache.wrap(keys, [values[0], torch.zeros(3, 2, 20, 16)])


def test_slot_ids_follow_the_tables():
    tables = torch.tensor([[5, 2, 7], [1, 3, 0]], dtype=torch.int32)
    seq_ids = torch.tensor([0, 0, 0, 1, 1])
    positions = torch.tensor([0, 4, 9, 3, 4], dtype=torch.int32)
    expected = [5 * 4 + 0, 2 * 4 + 0, 7 * 4 + 1, 1 * 4 + 3, 3 * 4 + 0]
    assert slot_ids(tables, seq_ids, positions, 4).tolist() == expected
    with pytest.raises(ValueError, match="alike"):
        slot_ids(tables, seq_ids[:2], positions, 4)


def test_packed_positions_count_from_zero_per_prompt():
    seq_ids, positions = packed_positions(torch.tensor([0, 3, 4, 8], dtype=torch.int32))
    assert seq_ids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
