"""Varlen causal prefill attention (Triton, interpreter on CPU) against the float32 reference."""

import pytest
import torch
import torch.nn.functional as F

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference

BF16_TOL = 1e-2


def _packed(lengths, heads, kv_heads, dim, device, seed, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, generator=gen).to(device, dtype)
               for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return q, k, v, cu.to(device)


def _ref(q, k, v, cu, **kw):
    return reference.prefill_attention(q.cpu().float(), k.cpu().float(), v.cpu().float(),
                                       cu.cpu(), **kw)


@pytest.mark.parametrize("heads,kv_heads,config", [
    (8, 2, None), (8, 2, (32, 16)), (4, 4, None), (4, 4, (16, 16)), (4, 1, (32, 32))])
def test_matches_reference(heads, kv_heads, config, device, rel_err):
    """Prompts of 1 token, a tile minus one, a tile, a tile plus one and several tiles (64-query
    tiles in the interpreter's default, 32 and 16 in the others), packed back to back."""
    from pipedecode.runtime.kernels._prefill_attention import PrefillConfig

    lengths = [1, 63, 64, 65, 130, 17]
    q, k, v, cu = _packed(lengths, heads, kv_heads, 32, device, seed=heads + kv_heads)
    cfg = None if config is None else PrefillConfig(block_m=config[0], block_n=config[1])
    out = torch.full_like(q, float("nan"))
    kernels.prefill_attention(q, k, v, cu, max_seqlen=max(lengths), out=out, config=cfg)
    assert rel_err(out.cpu(), _ref(q, k, v, cu)) < BF16_TOL


def test_float32_is_exact_to_float32_rounding(device):
    """float32 inputs take IEEE float32 dots: the kernel agrees with the reference to 1e-5."""
    q, k, v, cu = _packed([40, 7, 90], 4, 2, 16, device, seed=5, dtype=torch.float32)
    out = kernels.prefill_attention(q, k, v, cu, max_seqlen=90, scale=0.2)
    torch.testing.assert_close(out.cpu(), _ref(q, k, v, cu, scale=0.2), rtol=1e-5, atol=1e-5)


def test_is_causal_and_stays_inside_each_prompt(device):
    """Changing the last token of prompt 0 changes only that token's output; changing prompt 1
    leaves prompt 0 alone (no key is read across a prompt's end)."""
    q, k, v, cu = _packed([50, 30], 4, 2, 16, device, seed=8, dtype=torch.float32)
    base = kernels.prefill_attention(q, k, v, cu, max_seqlen=50).cpu()
    k2, v2 = k.clone(), v.clone()
    k2[49] += 3.0
    v2[49] -= 3.0
    k2[50:] = float("nan")
    v2[50:] = float("nan")
    moved = kernels.prefill_attention(q, k2, v2, cu, max_seqlen=50).cpu()
    assert torch.equal(moved[:49], base[:49])
    assert not torch.equal(moved[49], base[49])


def test_reference_equals_sdpa_per_prompt():
    """The reference (transformers' eager arithmetic) against torch's causal SDPA, prompt by
    prompt, in float32."""
    q, k, v, cu = _packed([9, 1, 33], 8, 2, 16, "cpu", seed=1, dtype=torch.float32)
    got = reference.prefill_attention(q, k, v, cu)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        expected = F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1).repeat_interleave(4, 0),
            v[a:b].transpose(0, 1).repeat_interleave(4, 0), is_causal=True).transpose(0, 1)
        torch.testing.assert_close(got[a:b], expected, rtol=1e-5, atol=1e-5)


def test_config_and_inputs_are_checked():
    from pipedecode.runtime.kernels._prefill_attention import PrefillConfig

    with pytest.raises(ValueError, match="multiple"):
        PrefillConfig(block_m=32, block_n=64)
    with pytest.raises(ValueError, match="power of two"):
        PrefillConfig(block_m=48)
    q, k, v, cu = _packed([4, 4], 4, 2, 16, "cpu", seed=2)
    with pytest.raises(ValueError, match="cu_seqlens"):
        kernels.prefill_attention(q, k, v, cu.long(), max_seqlen=4)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        kernels.prefill_attention(q[:, :3], k, v, cu, max_seqlen=4)
    with pytest.raises(ValueError, match="max_seqlen"):
        kernels.prefill_attention(q, k, v, cu, max_seqlen=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("heads,kv_heads", [(32, 8), (32, 32)])
def test_gpu_llama3_shape_against_reference(heads, kv_heads, rel_err):
    """16 prompts of 100..1024 tokens at Llama-3-8B heads (and MHA), bf16 against float32."""
    gen = torch.Generator().manual_seed(heads + kv_heads)
    lengths = torch.randint(100, 1025, (16,), generator=gen).tolist()
    lengths[:3] = [1, 1024, 129]
    q, k, v, cu = _packed(lengths, heads, kv_heads, 128, "cuda", seed=3)
    out = torch.full_like(q, float("nan"))
    kernels.prefill_attention(q, k, v, cu, max_seqlen=max(lengths), out=out)
    expected = reference.prefill_attention(q.float(), k.float(), v.float(), cu)
    assert rel_err(out, expected) < BF16_TOL
