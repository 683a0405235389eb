"""The torch references: transformers' eager arithmetic in the model dtype, the float32
reference in float32, and the cache layouts they read and write."""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from pipedecode.runtime.kernels import reference


def _rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_rms_norm_is_transformers_in_bf16_and_one_rounding_from_float32():
    x, w = _rand(5, 64, seed=1, dtype=torch.bfloat16), _rand(64, seed=2, dtype=torch.bfloat16)
    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    norm.weight.data.copy_(w)
    with torch.no_grad():
        assert torch.equal(reference.rms_norm(x, w, 1e-5), norm(x))
    # the decode step's float32 residual stream: float32 all the way, rounded once into out
    xf = x.float() * 3
    out = torch.empty(5, 64, dtype=torch.bfloat16)
    reference.rms_norm(xf, w, 1e-5, out=out)
    exact = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
    assert (out.float() - exact).abs().max() <= exact.abs().max() * 2 ** -8


def test_apply_rope_is_transformers():
    q, k = _rand(7, 4, 16, seed=3, dtype=torch.bfloat16), _rand(7, 2, 16, seed=4,
                                                                 dtype=torch.bfloat16)
    cos, sin = _rand(7, 16, seed=5, dtype=torch.bfloat16), _rand(7, 16, seed=6,
                                                                 dtype=torch.bfloat16)
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                      cos[None], sin[None])
    assert torch.equal(reference.apply_rope(q, cos, sin), hf_q[0].transpose(0, 1))
    assert torch.equal(reference.apply_rope(k, cos, sin), hf_k[0].transpose(0, 1))


def test_linear_add_rounds_the_product_to_the_input_dtype_first():
    """transformers' residual add: the product in bf16, then the add (a float32 residual)."""
    x, w = _rand(6, 64, seed=7, dtype=torch.bfloat16), _rand(16, 64, seed=8, dtype=torch.bfloat16)
    residual = _rand(6, 16, seed=9)
    out = residual.clone()
    reference.linear_add(x, w, out=out, scratch=torch.empty(6, 16, dtype=torch.bfloat16))
    assert torch.equal(out, residual + (x @ w.t()).float())
    assert not torch.equal(out, residual + x.float() @ w.float().t())


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4)])
def test_decode_attention_is_a_softmax_per_request_and_ignores_padding(heads, kv_heads):
    """Against a float64 loop over requests; positions outside [start, length) hold inf/NaN."""
    q, k, v = _rand(3, heads, 16, seed=1), _rand(3, kv_heads, 12, 16, seed=2), \
        _rand(3, kv_heads, 12, 16, seed=3)
    lens = torch.tensor([1, 7, 12], dtype=torch.int32)
    starts = torch.tensor([0, 2, 5], dtype=torch.int32)
    expected = torch.empty(3, heads, 16, dtype=torch.float64)
    for b in range(3):
        keys = k[b, :, starts[b]:lens[b]].double().repeat_interleave(heads // kv_heads, 0)
        vals = v[b, :, starts[b]:lens[b]].double().repeat_interleave(heads // kv_heads, 0)
        probs = torch.softmax((q[b].double()[:, None] * keys).sum(-1) / 4.0, -1)
        expected[b] = (probs[..., None] * vals).sum(1)
    for b in range(3):
        k[b, :, lens[b]:], v[b, :, lens[b]:] = float("inf"), float("nan")
        k[b, :, :starts[b]], v[b, :, :starts[b]] = float("nan"), float("inf")
    got = reference.decode_attention(q, k, v, lens, context_starts=starts)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_cache_slots_and_write_kv_address_the_block_layout():
    """Position p of request b is block tables[b, p // bs] at offset p % bs; a static cache is
    one block per request; write_kv's flat slot is block * bs + offset."""
    tables = torch.tensor([[3, 1, 4], [2, 5, 0]], dtype=torch.int32)
    positions = torch.tensor([9, 4], dtype=torch.int32)
    blocks, offsets = reference.cache_slots(positions, 4, tables)
    assert blocks.tolist() == [4, 5] and offsets.tolist() == [1, 0]
    blocks, offsets = reference.cache_slots(positions, 16)
    assert blocks.tolist() == [0, 1] and offsets.tolist() == [9, 4]
    pool = torch.zeros(6, 2, 4, 8)
    k = _rand(2, 2, 8, seed=11)
    reference.write_kv(k, k, pool, pool.clone(), torch.tensor([4 * 4 + 1, 2 * 4 + 0]))
    assert torch.equal(pool[4, :, 1], k[0]) and torch.equal(pool[2, :, 0], k[1])
    assert pool.abs().sum() == k.abs().sum()


def test_gather_blocks_reads_past_the_last_block_as_the_null_block():
    pool = torch.arange(4 * 1 * 2 * 1, dtype=torch.float32).view(4, 1, 2, 1)
    tables = torch.tensor([[2, 3], [1, 99]], dtype=torch.int32)     # 99: garbage, never used
    lens = torch.tensor([3, 2], dtype=torch.int32)
    got = reference.gather_blocks(pool, tables, lens)[:, 0, :, 0]
    assert got.tolist() == [[4, 5, 6, 7], [2, 3, 0, 1]]
    assert math.isfinite(got.sum().item())
