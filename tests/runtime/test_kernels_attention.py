"""Decode attention (Triton, interpreter on CPU) against the float32 reference."""

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference

BF16_TOL = 1e-2


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
    expected = reference.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu())
    assert rel_err(out.cpu(), expected) < BF16_TOL


def test_padding_is_never_read(device, rel_err):
    q, k, v, lens = _inputs(2, 4, 2, 16, 64, device, seed=7)
    expected = reference.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu())
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
    expected = reference.decode_attention(q.cpu(), k[:, :, :].cpu(), v.cpu(), lens.cpu(),
                                          context_starts=starts.cpu())
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
    expected = reference.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu(),
                                          context_starts=None if starts is None else starts.cpu())
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
    expected = reference.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu(), scale=0.3)
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

    expected = reference.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu())
    for sms in (32, 132):
        for cfg in (None, AttentionConfig(fused_combine=True)):
            out = torch.full_like(q, float("nan"))
            kernels.decode_attention(q, k, v, lens, sm_count=sms, out=out, config=cfg)
            assert rel_err(out.cpu(), expected) < BF16_TOL
