"""RMSNorm, RoPE + KV write (static and paged) and the prefill's KV write against float32
references; import without triton."""

import subprocess
import sys

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference

BF16_TOL = 1e-2


def test_silu_mul_matches_torch(device, rel_err):
    """One pass of silu(gate) * up over [tokens, 2 * inter], on a row stride wider than the
    row. On a GPU it rounds as torch's bf16 ops do (silu rounded, then the product); the CPU
    interpreter truncates its bf16 casts, so there it is held to the float32 result."""
    from pipedecode.runtime import kernels as pkg

    if pkg.backend(torch.empty(0, device=device)) != "triton":
        return                                   # no triton here: the torch path runs instead
    from pipedecode.runtime.kernels._elementwise import silu_mul

    gen = torch.Generator().manual_seed(3)
    y = (torch.randn(7, 2 * 1500 + 8, generator=gen) * 4).to(device, torch.bfloat16)[:, :3000]
    out = torch.full((7, 1500), float("nan"), device=device, dtype=torch.bfloat16)
    silu_mul(y, out)
    yf = y.float()
    assert rel_err(out.float().cpu(), (torch.nn.functional.silu(yf[:, :1500]) * yf[:, 1500:])
                   .cpu()) < BF16_TOL
    if y.is_cuda:
        torch_bf16 = torch.nn.functional.silu(y[:, :1500]) * y[:, 1500:]
        assert (out == torch_bf16).float().mean() > 0.99    # bitwise but for rare sigmoid ulps


def test_rms_norm_matches_reference(device, rel_err):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 100, generator=gen).to(device, torch.bfloat16)
    w = torch.randn(100, generator=gen).to(device, torch.bfloat16)
    out = torch.full_like(x, float("nan"))
    kernels.rms_norm(x, w, 1e-5, out=out)
    expected = reference.rms_norm(x.cpu().float(), w.cpu().float(), 1e-5)
    assert rel_err(out.cpu(), expected) < BF16_TOL


def test_rope_kv_write_rotates_and_writes(device, rel_err):
    gen = torch.Generator().manual_seed(4)
    batch, heads, kv_heads, dim, ctx = 3, 4, 2, 16, 12
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, torch.bfloat16)  # noqa: E731
    q, k, v = rnd(batch, heads, dim), rnd(batch, kv_heads, dim), rnd(batch, kv_heads, dim)
    angle = torch.rand(batch, dim // 2, generator=gen) * 6.0
    cos = torch.cat([angle.cos()] * 2, -1).to(device, torch.bfloat16)
    sin = torch.cat([angle.sin()] * 2, -1).to(device, torch.bfloat16)
    k_cache, v_cache = rnd(batch, kv_heads, ctx, dim), rnd(batch, kv_heads, ctx, dim)
    k_ref, v_ref = k_cache.cpu().float(), v_cache.cpu().float()
    positions = torch.tensor([0, 5, ctx - 1], dtype=torch.int32)
    q_out = kernels.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions.to(device))
    q_ref = reference.rope_kv_write(*(t.cpu().float() for t in (q, k, v, cos, sin)), k_ref, v_ref,
                                    positions)
    assert rel_err(q_out.cpu(), q_ref) < BF16_TOL
    assert rel_err(k_cache.cpu(), k_ref) < BF16_TOL
    assert torch.equal(v_cache.cpu().float(), v_ref)
    assert not torch.equal(k_cache.cpu()[1, :, 5], k.cpu()[1])   # rotated, not copied


def test_package_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from pipedecode.runtime import kernels\n"
            "x = torch.randn(3, 8, dtype=torch.bfloat16); w = torch.randn(5, 8, dtype=torch.bfloat16)\n"
            "assert kernels.backend(x) == 'reference', kernels.backend(x)\n"
            "print(kernels.linear(x, w).shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([3, 5])" in result.stdout


def _rope_inputs(batch, heads, kv_heads, dim, device, gen):
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, torch.bfloat16)  # noqa: E731
    q, k, v = rnd(batch, heads, dim), rnd(batch, kv_heads, dim), rnd(batch, kv_heads, dim)
    angle = torch.rand(batch, dim // 2, generator=gen) * 6.0
    cos = torch.cat([angle.cos()] * 2, -1).to(device, torch.bfloat16)
    sin = torch.cat([angle.sin()] * 2, -1).to(device, torch.bfloat16)
    return q, k, v, cos, sin


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_rope_kv_write_goes_through_the_table(heads, kv_heads, block_size, device, rel_err):
    """Positions at, before and after block boundaries, shuffled tables, a padded row writing
    position 0 of the null block: each request's slot gets its rotated k and its v, and no
    other slot of the pools changes."""
    gen = torch.Generator().manual_seed(heads * block_size)
    batch, dim, max_blocks, num_blocks = 6, 16, 4, 30
    q, k, v, cos, sin = _rope_inputs(batch, heads, kv_heads, dim, device, gen)
    pools = [torch.randn(num_blocks, kv_heads, block_size, dim, generator=gen)
             .to(device, torch.bfloat16) for _ in range(2)]
    before = [p.cpu().float() for p in pools]
    tables = (torch.randperm(num_blocks - 1, generator=gen)[:batch * max_blocks] + 1) \
        .view(batch, max_blocks).to(torch.int32)
    positions = torch.tensor([0, block_size - 1, block_size, 2 * block_size + 3,
                              4 * block_size - 1, 0], dtype=torch.int32)
    tables[-1] = 0                                                    # the padded row
    q_out = kernels.rope_kv_write(q, k, v, cos, sin, pools[0], pools[1], positions.to(device),
                                  block_tables=tables.to(device))
    expected = [p.clone() for p in before]
    q_ref = reference.rope_kv_write(*(t.cpu().float() for t in (q, k, v, cos, sin)), *expected,
                                    positions, block_tables=tables)
    assert rel_err(q_out.cpu(), q_ref) < BF16_TOL
    assert rel_err(pools[0].cpu(), expected[0]) < BF16_TOL
    assert torch.equal(pools[1].cpu().float(), expected[1])
    changed = (pools[1].cpu().float() != before[1]).any(-1).any(1)    # [blocks, block_size]
    assert changed.sum() == batch
    for b, pos in enumerate(positions.tolist()):
        assert changed[tables[b, pos // block_size], pos % block_size]


@pytest.mark.parametrize("kv_heads,dim", [(2, 16), (3, 32)])
@pytest.mark.parametrize("block_size", [16, 32])
def test_write_kv_fills_exactly_its_slots(kv_heads, dim, block_size, device):
    """Strided k/v (views of a fused projection, as the prefill has them), slots in shuffled
    blocks and across boundaries; every other slot keeps its value; a bf16 copy is exact."""
    gen = torch.Generator().manual_seed(kv_heads * 100 + block_size)
    tokens, num_blocks = 45, 8
    fused = torch.randn(tokens, 3 * kv_heads * dim, generator=gen).to(device, torch.bfloat16)
    k = fused[:, kv_heads * dim:2 * kv_heads * dim].view(tokens, kv_heads, dim)
    v = fused[:, 2 * kv_heads * dim:].view(tokens, kv_heads, dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    pools = [torch.randn(num_blocks, kv_heads, block_size, dim, generator=gen)
             .to(device, torch.bfloat16) for _ in range(2)]
    expected = [p.cpu().clone() for p in pools]
    pools_before = [p.cpu().clone() for p in pools]
    kernels.write_kv(k, v, pools[0], pools[1], slots.to(device))
    reference.write_kv(k.cpu(), v.cpu(), expected[0], expected[1], slots)
    assert torch.equal(pools[0].cpu(), expected[0]) and torch.equal(pools[1].cpu(), expected[1])
    flat = pools[1].cpu().transpose(1, 2).reshape(num_blocks * block_size, kv_heads, dim)
    assert torch.equal(flat[slots], v.cpu())
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False
    before = pools_before[1].transpose(1, 2).reshape(num_blocks * block_size, kv_heads, dim)
    assert torch.equal(flat[untouched], before[untouched])


def test_write_kv_rejects_bad_shapes():
    k = torch.zeros(4, 2, 16)
    pool = torch.zeros(3, 2, 8, 16)
    with pytest.raises(ValueError, match="slot_mapping"):
        kernels.write_kv(k, k, pool, pool, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="pools"):
        kernels.write_kv(k, k, pool[:, :1], pool[:, :1], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="int32 or int64"):
        kernels.write_kv(k, k, pool, pool, torch.zeros(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_paged_writes_llama3_shape(rel_err):
    """Llama-3-8B heads (32 / 8, head_dim 128), block size 16: the paged RoPE write of a
    decode batch and the prefill's write of 4096 tokens, bf16 against the float32 reference."""
    gen = torch.Generator().manual_seed(11)
    batch, num_blocks, bs = 64, 1024, 16
    q, k, v, cos, sin = _rope_inputs(batch, 32, 8, 128, "cuda", gen)
    pools = [torch.randn(num_blocks, 8, bs, 128, generator=gen).to("cuda", torch.bfloat16)
             for _ in range(2)]
    expected = [p.cpu().float() for p in pools]
    tables = (torch.randperm(num_blocks - 1, generator=gen)[:batch * 8] + 1).view(batch, 8)
    tables = tables.to(torch.int32)
    positions = torch.randint(0, 8 * bs, (batch,), generator=gen, dtype=torch.int32)
    q_out = kernels.rope_kv_write(q, k, v, cos, sin, *pools, positions.cuda(),
                                  block_tables=tables.cuda())
    q_ref = reference.rope_kv_write(*(t.cpu().float() for t in (q, k, v, cos, sin)), *expected,
                                    positions, block_tables=tables)
    assert rel_err(q_out.cpu(), q_ref) < BF16_TOL
    assert rel_err(pools[0].cpu(), expected[0]) < BF16_TOL
    assert torch.equal(pools[1].cpu().float(), expected[1])
    tokens = 4096
    k2 = torch.randn(tokens, 8, 128, generator=gen).to("cuda", torch.bfloat16)
    v2 = torch.randn(tokens, 8, 128, generator=gen).to("cuda", torch.bfloat16)
    slots = torch.randperm(num_blocks * bs, generator=gen)[:tokens]
    expected = [p.cpu() for p in pools]
    kernels.write_kv(k2, v2, *pools, slots.cuda())
    reference.write_kv(k2.cpu(), v2.cpu(), *expected, slots)
    assert torch.equal(pools[0].cpu(), expected[0]) and torch.equal(pools[1].cpu(), expected[1])
