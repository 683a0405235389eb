"""Decode attention (Triton, interpreter on CPU) against the float32 reference, on static
caches and on paged ones (block pools read through shuffled block tables)."""

import math

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference

BF16_TOL = 1e-2


def _ref(q, k, v, lens, **kw):
    """The float32 reference on CPU copies."""
    kw = {n: t.cpu() if isinstance(t, torch.Tensor) else t for n, t in kw.items()}
    return reference.decode_attention(q.cpu().float(), k.cpu().float(), v.cpu().float(),
                                      lens.cpu(), **kw)


def _inputs(batch, heads, kv_heads, dim, max_ctx, device, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, dim, generator=gen).to(device, torch.bfloat16)
    k = torch.randn(batch, kv_heads, max_ctx, dim, generator=gen).to(device, torch.bfloat16)
    v = torch.randn(batch, kv_heads, max_ctx, dim, generator=gen).to(device, torch.bfloat16)
    lens = torch.randint(1, max_ctx + 1, (batch,), generator=gen, dtype=torch.int32)
    lens[0] = 1
    lens[-1] = max_ctx
    return q, k, v, lens.to(device)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("split", [False, True])
def test_matches_reference_mha_and_gqa(heads, kv_heads, split, device, rel_err):
    from pipedecode.runtime.kernels._attention import AttentionConfig

    q, k, v, lens = _inputs(3, heads, kv_heads, 32, 150, device, seed=heads * 10 + split)
    # split=True: chunks of 32 keys, so long requests span several splits and a combine
    cfg = AttentionConfig(block_n=16, min_chunk=32, programs_per_sm=8) if split else None
    out = torch.full_like(q, float("nan"))
    kernels.decode_attention(q, k, v, lens, sm_count=8, out=out, config=cfg)
    expected = _ref(q, k, v, lens)
    assert rel_err(out.cpu(), expected) < BF16_TOL


def test_padding_is_never_read(device, rel_err):
    q, k, v, lens = _inputs(2, 4, 2, 16, 64, device, seed=7)
    expected = _ref(q, k, v, lens)
    for b, n in enumerate(lens.tolist()):        # poison everything past each request's length
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("inf")
    out = kernels.decode_attention(q, k, v, lens, sm_count=4)
    assert rel_err(out.cpu(), expected) < BF16_TOL


@pytest.mark.parametrize("split", [False, True])
def test_context_starts_skip_left_padding(split, device, rel_err):
    """Keys before context_starts[b] (a left-padded cache) are never read nor attended."""
    from pipedecode.runtime.kernels._attention import AttentionConfig

    q, k, v, _ = _inputs(3, 8, 2, 32, 150, device, seed=20 + split)
    lens = torch.tensor([150, 97, 40], dtype=torch.int32, device=device)
    starts = torch.tensor([0, 70, 39], dtype=torch.int32, device=device)   # 150, 27, 1 keys
    expected = _ref(q, k, v, lens, context_starts=starts)
    for b, first in enumerate(starts.tolist()):      # poison the padding
        k[b, :, :first] = float("nan")
        v[b, :, :first] = float("inf")
    cfg = AttentionConfig(block_n=16, min_chunk=32, programs_per_sm=8) if split else None
    out = torch.full_like(q, float("nan"))
    kernels.decode_attention(q, k, v, lens, sm_count=8, out=out, config=cfg,
                             context_starts=starts)
    assert rel_err(out.cpu(), expected) < BF16_TOL
    # the reference itself: row 2 has one key, so it returns that key's value
    assert torch.equal(expected[2].to(torch.bfloat16),
                       v[2, :, 39].cpu().repeat_interleave(4, dim=0))


@pytest.mark.parametrize("with_starts", [False, True])
def test_fused_combine_matches_reference_and_leaves_locks_at_zero(with_starts, device, rel_err):
    """One launch: the last split of each (request, KV head) merges the partials. Requests span
    1 to 5 splits of 32 keys, or none where a start skips them; two calls reuse the counters."""
    from pipedecode.runtime.kernels._attention import AttentionConfig

    q, k, v, _ = _inputs(4, 8, 2, 32, 150, device, seed=31 + with_starts)
    lens = torch.tensor([150, 97, 40, 1], dtype=torch.int32, device=device)
    starts = torch.tensor([0, 70, 39, 0], dtype=torch.int32, device=device) if with_starts \
        else None
    expected = _ref(q, k, v, lens, context_starts=starts)
    cfg = AttentionConfig(block_n=16, min_chunk=32, programs_per_sm=8, fused_combine=True)
    locks = torch.zeros(4 * 2, dtype=torch.int32, device=device)
    for _ in range(2):
        out = torch.full_like(q, float("nan"))
        kernels.decode_attention(q, k, v, lens, sm_count=8, out=out, config=cfg,
                                 context_starts=starts, locks=locks)
        assert rel_err(out.cpu(), expected) < BF16_TOL
        assert not locks.any()
    unfused = kernels.decode_attention(q, k, v, lens, sm_count=8, context_starts=starts,
                                       config=AttentionConfig(block_n=16, min_chunk=32,
                                                              programs_per_sm=8))
    assert rel_err(out.cpu(), unfused.cpu()) < 1e-3    # same partials, merged in another order
    with pytest.raises(ValueError, match="locks"):
        kernels.decode_attention(q, k, v, lens, sm_count=8, config=cfg, locks=locks[:3])


def test_single_token_context_returns_its_value(device):
    q, k, v, _ = _inputs(2, 4, 2, 16, 8, device, seed=3)
    lens = torch.ones(2, dtype=torch.int32, device=device)
    out = kernels.decode_attention(q, k, v, lens)
    # one key: softmax weight 1, so each query head returns its KV head's first value row
    expected = v[:, :, 0].repeat_interleave(2, dim=1)
    assert torch.equal(out.cpu(), expected.cpu())


def test_custom_scale_and_strided_cache(device, rel_err):
    q, k, v, lens = _inputs(2, 4, 2, 16, 40, device, seed=11)
    big_k = torch.randn(2, 2, 64, 16).to(device, torch.bfloat16)
    big_k[:, :, :40] = k                      # a view into a larger cache: stride(2) != dim
    out = kernels.decode_attention(q, big_k[:, :, :40], v, lens, scale=0.3)
    expected = _ref(q, k, v, lens, scale=0.3)
    assert rel_err(out.cpu(), expected) < BF16_TOL


def test_rejects_bad_shapes():
    q = torch.zeros(2, 6, 16, dtype=torch.bfloat16)
    k = torch.zeros(2, 4, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        kernels.decode_attention(q, k, k, torch.ones(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="context_lens"):
        kernels.decode_attention(q[:, :4], k, k, torch.ones(3, dtype=torch.int32))


def test_launch_shape_follows_the_sm_count():
    from pipedecode.runtime.kernels._attention import AttentionConfig, WHOLE_GPU, choose_config

    assert choose_config(132) == WHOLE_GPU and WHOLE_GPU.block_n == 128
    assert choose_config(32) == AttentionConfig()


def test_launch_shape_fits_shared_memory_for_wide_caches():
    """A float32 cache at head_dim 128 would need 256 KiB of K/V tiles at the whole-GPU shape
    (it failed to launch on an H100): one stage fewer fits; bf16 keeps the measured shape."""
    from pipedecode.runtime.kernels._attention import (KV_PIPELINE_BYTES, WHOLE_GPU, choose_config,
                                                       kv_pipeline_bytes)

    assert kv_pipeline_bytes(WHOLE_GPU, 128, 4) > KV_PIPELINE_BYTES
    wide = choose_config(132, head_dim=128, element_size=4)
    assert kv_pipeline_bytes(wide, 128, 4) <= KV_PIPELINE_BYTES
    assert (wide.block_n, wide.num_stages) == (128, 2)
    assert choose_config(132, head_dim=128, element_size=2) == WHOLE_GPU
    huge = choose_config(132, head_dim=512, element_size=4)
    assert kv_pipeline_bytes(huge, 512, 4) <= KV_PIPELINE_BYTES and huge.num_stages == 2


def test_split_plan_fills_the_partition():
    from pipedecode.runtime.kernels._attention import AttentionConfig, plan_splits

    cfg = AttentionConfig()
    splits, chunk = plan_splits(4, 8, 4096, 132, cfg)
    assert splits * 4 * 8 >= 132 and chunk % cfg.block_n == 0 and splits * chunk >= 4096
    assert plan_splits(512, 8, 1024, 132, cfg)[0] == 1          # big batches need no split
    assert plan_splits(1, 1, 100, 132, cfg) == (1, 128)         # never below min_chunk
    with pytest.raises(ValueError):
        plan_splits(0, 8, 10, 132, cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_llama3_shape_against_reference(rel_err):
    q, k, v, lens = _inputs(16, 32, 8, 128, 1024, "cuda", seed=5)
    from pipedecode.runtime.kernels._attention import AttentionConfig

    expected = _ref(q, k, v, lens)
    for sms in (32, 132):
        for cfg in (None, AttentionConfig(fused_combine=True)):
            out = torch.full_like(q, float("nan"))
            kernels.decode_attention(q, k, v, lens, sm_count=sms, out=out, config=cfg)
            assert rel_err(out.cpu(), expected) < BF16_TOL


# Paged caches ----------------------------------------------------------------------------------
POISON_BLOCK = -1   # a table entry past a request's last block: points at a block of NaNs


def _paged(k, v, lens, block_size, seed, padded_rows=0):
    """The static caches k, v [batch, kv, max_ctx, dim] scattered into pools of shuffled blocks.

    Every position a request does not own is NaN (so a read of it shows), block 0 (the null
    block) holds finite values, and table entries past a request's last block point at a
    poisoned block. `padded_rows` rows are appended with context length 1 and a table of zeros.
    Returns (k_pool, v_pool, tables, lens) with the padded rows included.
    """
    gen = torch.Generator().manual_seed(seed)
    batch, kv_heads, max_ctx, dim = k.shape
    max_blocks = math.ceil(max_ctx / block_size)
    num_blocks = 2 + batch * max_blocks
    order = (torch.randperm(num_blocks - 2, generator=gen) + 2).view(batch, max_blocks)
    pools = []
    for cache in (k, v):
        pool = torch.full((num_blocks, kv_heads, block_size, dim), float("nan"), dtype=k.dtype)
        pool[0] = torch.randn(kv_heads, block_size, dim, generator=gen).to(k.dtype)
        for b, n in enumerate(lens.tolist()):
            for j in range(math.ceil(n / block_size)):
                part = cache[b, :, j * block_size:min(n, (j + 1) * block_size)].cpu()
                pool[order[b, j], :, :part.shape[1]] = part
        pools.append(pool.to(k.device))
    tables = order.clone()
    for b, n in enumerate(lens.tolist()):
        tables[b, math.ceil(n / block_size):] = 1                  # block 1: all NaN
    tables = torch.cat([tables, torch.zeros(padded_rows, max_blocks, dtype=tables.dtype)])
    lens = torch.cat([lens.cpu(), torch.ones(padded_rows, dtype=lens.dtype)])
    return pools[0], pools[1], tables.to(torch.int32).to(k.device), lens.to(k.device)


def _crossing_lens(batch, max_ctx, block_size, seed):
    """Ragged lengths in 1..max_ctx, with ones just before, at and after block boundaries."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_ctx + 1, (batch,), generator=gen, dtype=torch.int32)
    fixed = [1, block_size, block_size + 1, 2 * block_size - 1, max_ctx]
    lens[:len(fixed)] = torch.tensor(fixed[:batch], dtype=torch.int32)
    return lens


@pytest.mark.parametrize("heads,kv_heads,block_size,config", [
    (8, 2, 16, "default"), (8, 2, 32, "split"), (4, 4, 16, "split"), (4, 4, 32, "default"),
    (8, 2, 32, "fused")])
def test_paged_matches_reference_and_the_static_kernel(heads, kv_heads, block_size, config,
                                                       device, rel_err):
    """Shuffled tables, ragged lengths across block boundaries, two padded rows on the null
    block. Key blocks of 64 (default, whole cache blocks per tile) and 16 (split: a divisor of
    32, so tiles lie inside one block) with splits of 32 keys, and the fused combine."""
    from pipedecode.runtime.kernels._attention import AttentionConfig

    cfg = {"default": None, "split": AttentionConfig(block_n=16, min_chunk=32, programs_per_sm=8),
           "fused": AttentionConfig(block_n=16, min_chunk=32, programs_per_sm=8,
                                    fused_combine=True)}[config]
    q, k, v, _ = _inputs(6, heads, kv_heads, 32, 150, device, seed=heads + block_size)
    lens = _crossing_lens(6, 150, block_size, seed=block_size).to(device)
    k_pool, v_pool, tables, all_lens = _paged(k, v, lens, block_size, seed=3, padded_rows=2)
    q_all = torch.cat([q, torch.randn(2, heads, 32).to(device, q.dtype)])
    out = torch.full_like(q_all, float("nan"))
    kernels.decode_attention(q_all, k_pool, v_pool, all_lens, sm_count=8, out=out, config=cfg,
                             block_tables=tables)
    expected = _ref(q, k, v, lens)
    assert rel_err(out[:6].cpu(), expected) < BF16_TOL
    static = kernels.decode_attention(q, k, v, lens, sm_count=8, config=cfg)
    assert rel_err(out[:6].cpu(), static.cpu()) < 1e-3       # the same sums, in other splits
    # padded rows read the null block's first position: one key, weight 1
    null_value = v_pool[0, :, 0].cpu().repeat_interleave(heads // kv_heads, dim=0)
    assert torch.equal(out[6:].cpu(), null_value.expand(2, -1, -1))


def test_paged_reference_reads_through_the_table(rel_err):
    """The reference's paged form equals its static form (the float32 arithmetic the kernels
    are held to), NaNs outside the tables notwithstanding."""
    q, k, v, _ = _inputs(5, 8, 2, 16, 70, "cpu", seed=9)
    q, k, v = q.float(), k.float(), v.float()
    lens = _crossing_lens(5, 70, 16, seed=2)
    k_pool, v_pool, tables, _ = _paged(k, v, lens, 16, seed=4)
    paged = reference.decode_attention(q, k_pool, v_pool, lens, block_tables=tables)
    torch.testing.assert_close(paged, reference.decode_attention(q, k, v, lens), rtol=1e-6,
                               atol=1e-6)


def test_paged_any_block_size(device, rel_err):
    """A block size that is neither a divisor nor a multiple of any key block (24): each key's
    row is looked up on its own, still exact."""
    from pipedecode.runtime.kernels._attention import AttentionConfig, fit_block

    assert fit_block(AttentionConfig(block_n=64), 24).block_n == 64
    q, k, v, _ = _inputs(4, 4, 2, 16, 100, device, seed=12)
    lens = _crossing_lens(4, 100, 24, seed=5).to(device)
    k_pool, v_pool, tables, _ = _paged(k, v, lens, 24, seed=6)
    out = kernels.decode_attention(q, k_pool, v_pool, lens, sm_count=8, block_tables=tables)
    assert rel_err(out.cpu(), _ref(q, k, v, lens)) < BF16_TOL


def test_fit_block_keeps_tiles_inside_blocks():
    from pipedecode.runtime.kernels._attention import AttentionConfig, fit_block

    cfg = AttentionConfig(block_n=128)
    assert fit_block(cfg, 16) is cfg and fit_block(cfg, 256) is cfg      # multiple, divisor
    assert fit_block(cfg, 48).block_n == 16                              # largest dividing 48
    assert fit_block(AttentionConfig(block_n=64), 96).block_n == 32


def test_paged_rejects_bad_tables():
    q = torch.zeros(2, 4, 16, dtype=torch.bfloat16)
    pool = torch.zeros(5, 2, 16, 16, dtype=torch.bfloat16)
    lens = torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        kernels.decode_attention(q, pool, pool, lens, block_tables=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="block_tables must be int32"):
        kernels.decode_attention(q, pool, pool, lens,
                                 block_tables=torch.zeros(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="exclude each other"):
        kernels.decode_attention(q, pool, pool, lens, context_starts=lens,
                                 block_tables=torch.zeros(2, 3, dtype=torch.int32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("heads,kv_heads", [(32, 8), (32, 32)])
def test_gpu_paged_llama3_shape_against_reference(heads, kv_heads, rel_err):
    """Llama-3-8B heads (and MHA), block size 16, ragged contexts up to 4096, padded rows, on
    32 and 64 SMs and the whole GPU: bf16 against the float32 reference."""
    q, k, v, _ = _inputs(24, heads, kv_heads, 128, 4096, "cuda", seed=heads + kv_heads)
    lens = _crossing_lens(24, 4096, 16, seed=7).cuda()
    k_pool, v_pool, tables, all_lens = _paged(k, v, lens, 16, seed=8, padded_rows=4)
    q_all = torch.cat([q, torch.randn_like(q[:4])])
    expected = _ref(q, k, v, lens)
    for sms in (32, 64, None):
        out = torch.full_like(q_all, float("nan"))
        kernels.decode_attention(q_all, k_pool, v_pool, all_lens, sm_count=sms, out=out,
                                 block_tables=tables)
        assert rel_err(out[:24].cpu(), expected) < BF16_TOL
        assert torch.isfinite(out[24:]).all()
