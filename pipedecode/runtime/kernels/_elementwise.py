"""Row-wise Triton kernels: RMSNorm, SiLU-and-multiply, RoPE fused with the KV-cache write (a
static cache or a paged one through its block table), the prefill's K/V write into flat slots,
an SM-id probe and a streaming-read probe.

Imports triton; load it through `pipedecode.runtime.kernels`, lazily. Shapes are checked by
the caller.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, o_ptr, s_x, s_o, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * s_x + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / hidden + eps)
    tl.store(o_ptr + row * s_o + offs, (x * rstd * w).to(o_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor) -> torch.Tensor:
    hidden = x.shape[-1]
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(x.shape[0],)](x, weight, out, x.stride(0), out.stride(0), hidden, eps,
                                    BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out


@triton.jit
def _silu_mul_kernel(y_ptr, o_ptr, s_y, s_o, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(y_ptr + row * s_y + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(y_ptr + row * s_y + inter + offs, mask=mask, other=0.0)
    # torch's bf16 arithmetic: silu rounded to the input dtype, then the product rounded
    act = (gate * tl.sigmoid(gate)).to(y_ptr.dtype.element_ty)
    tl.store(o_ptr + row * s_o + offs, (act.to(tl.float32) * up.to(tl.float32))
             .to(o_ptr.dtype.element_ty), mask=mask)


def silu_mul(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = silu(y[:, :inter]) * y[:, inter:] in one pass; y: [tokens, 2 * inter]."""
    inter = out.shape[1]
    block = 1024
    _silu_mul_kernel[(y.shape[0], triton.cdiv(inter, block))](
        y, out, y.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _rope_kv_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, bt_ptr, qo_ptr,
                    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_cb, s_sb,
                    s_kcb, s_kch, s_kcs, s_vcb, s_vch, s_vcs, s_qob, s_qoh, s_bt,
                    num_heads, block_size, HALF: tl.constexpr, PAGED: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)                     # 0..num_heads-1: q heads, then kv heads
    i = tl.arange(0, HALF)
    cos1 = tl.load(cos_ptr + b * s_cb + i).to(tl.float32)
    cos2 = tl.load(cos_ptr + b * s_cb + HALF + i).to(tl.float32)
    sin1 = tl.load(sin_ptr + b * s_sb + i).to(tl.float32)
    sin2 = tl.load(sin_ptr + b * s_sb + HALF + i).to(tl.float32)
    if h < num_heads:
        src = q_ptr + b * s_qb + h * s_qh
        x1 = tl.load(src + i).to(tl.float32)
        x2 = tl.load(src + HALF + i).to(tl.float32)
        dst = qo_ptr + b * s_qob + h * s_qoh
        tl.store(dst + i, (x1 * cos1 - x2 * sin1).to(qo_ptr.dtype.element_ty))
        tl.store(dst + HALF + i, (x2 * cos2 + x1 * sin2).to(qo_ptr.dtype.element_ty))
    else:
        hk = h - num_heads
        pos = tl.load(pos_ptr + b).to(tl.int64)
        if PAGED:    # position pos of request b: block block_tables[b, pos // block_size]
            blk = tl.load(bt_ptr + b * s_bt + pos // block_size).to(tl.int64)
            k_row = blk * s_kcb + (pos % block_size) * s_kcs
            v_row = blk * s_vcb + (pos % block_size) * s_vcs
        else:
            k_row = b * s_kcb + pos * s_kcs
            v_row = b * s_vcb + pos * s_vcs
        src = k_ptr + b * s_kb + hk * s_kh
        x1 = tl.load(src + i).to(tl.float32)
        x2 = tl.load(src + HALF + i).to(tl.float32)
        dst = kc_ptr + k_row + hk * s_kch
        tl.store(dst + i, (x1 * cos1 - x2 * sin1).to(kc_ptr.dtype.element_ty))
        tl.store(dst + HALF + i, (x2 * cos2 + x1 * sin2).to(kc_ptr.dtype.element_ty))
        vrow = tl.load(v_ptr + b * s_vb + hk * s_vh + tl.arange(0, 2 * HALF))
        tl.store(vc_ptr + v_row + hk * s_vch + tl.arange(0, 2 * HALF),
                 vrow.to(vc_ptr.dtype.element_ty))


def rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, q_out, block_tables=None):
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    paged = block_tables is not None
    tables = block_tables if paged else positions               # unused placeholder
    _rope_kv_kernel[(batch, num_heads + num_kv_heads)](
        q, k, v, cos, sin, k_cache, v_cache, positions, tables, q_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), sin.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), q_out.stride(0),
        q_out.stride(1), tables.stride(0), num_heads, k_cache.shape[2], HALF=head_dim // 2,
        PAGED=paged, num_warps=1)
    return q_out


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, s_kt, s_kh, s_vt, s_vh,
                     s_kcb, s_kch, s_kcs, s_vcb, s_vch, s_vcs, num_kv_heads, block_size,
                     HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    blk, off = slot // block_size, slot % block_size
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HEAD_DIM)
    ok = (h < num_kv_heads)[:, None]
    k = tl.load(k_ptr + t * s_kt + h[:, None] * s_kh + d[None, :], mask=ok)
    tl.store(kc_ptr + blk * s_kcb + off * s_kcs + h[:, None] * s_kch + d[None, :],
             k.to(kc_ptr.dtype.element_ty), mask=ok)
    v = tl.load(v_ptr + t * s_vt + h[:, None] * s_vh + d[None, :], mask=ok)
    tl.store(vc_ptr + blk * s_vcb + off * s_vcs + h[:, None] * s_vch + d[None, :],
             v.to(vc_ptr.dtype.element_ty), mask=ok)


def write_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """One program per token: its K and V rows of every KV head into its slot."""
    tokens, num_kv_heads, head_dim = k.shape
    if tokens == 0:
        return
    _write_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0),
        v_cache.stride(1), v_cache.stride(2), num_kv_heads, k_cache.shape[2],
        HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_DIM=head_dim, num_warps=4)


@triton.jit
def _smid_kernel(out_ptr, spin):
    smid = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                     is_pure=False, pack=1)
    acc = smid
    for _ in range(spin):                    # keep the program resident so others spread out
        acc = (acc * 1103515245 + 12345) & 0x7FFFFFFF
    tl.store(out_ptr + tl.program_id(0), tl.where(acc == -1, -2, smid))


def sm_ids(num_programs: int, device, spin: int = 20000) -> torch.Tensor:
    """The SM id each of num_programs programs ran on (CUDA only): shows which SMs a stream uses."""
    out = torch.full((num_programs,), -1, dtype=torch.int32, device=device)
    _smid_kernel[(num_programs,)](out, spin, num_warps=1)
    return out


@triton.jit
def _stream_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


def stream_read(x: torch.Tensor, sm_count: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Grid-stride read of all of x (per-program partial sums): the bandwidth ceiling probe."""
    programs = 8 * sm_count
    if out is None:
        out = torch.empty(programs, dtype=torch.float32, device=x.device)
    _stream_kernel[(programs,)](x, out, x.numel(), BLOCK=4096, num_warps=8)
    return out
