"""RMSNorm and RoPE + KV write against float32 references; import without triton."""

import subprocess
import sys

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
    assert rel_err(out.cpu(), reference.rms_norm(x.cpu(), w.cpu(), 1e-5)) < BF16_TOL


def test_rope_kv_write_rotates_and_writes(device, rel_err):
    gen = torch.Generator().manual_seed(4)
    batch, heads, kv_heads, dim, ctx = 3, 4, 2, 16, 12
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device, torch.bfloat16)  # noqa: E731
    q, k, v = rnd(batch, heads, dim), rnd(batch, kv_heads, dim), rnd(batch, kv_heads, dim)
    angle = torch.rand(batch, dim // 2, generator=gen) * 6.0
    cos = torch.cat([angle.cos()] * 2, -1).to(device, torch.bfloat16)
    sin = torch.cat([angle.sin()] * 2, -1).to(device, torch.bfloat16)
    k_cache, v_cache = rnd(batch, kv_heads, ctx, dim), rnd(batch, kv_heads, ctx, dim)
    k_ref, v_ref = k_cache.cpu().clone(), v_cache.cpu().clone()
    positions = torch.tensor([0, 5, ctx - 1], dtype=torch.int32)
    q_out = kernels.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions.to(device))
    q_ref = reference.rope_kv_write(q.cpu(), k.cpu(), v.cpu(), cos.cpu(), sin.cpu(), k_ref, v_ref,
                                    positions)
    assert rel_err(q_out.cpu(), q_ref) < BF16_TOL
    assert rel_err(k_cache.cpu(), k_ref) < BF16_TOL
    assert torch.equal(v_cache.cpu(), v_ref)
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
