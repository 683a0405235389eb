"""Causal flash attention over packed prompts in Triton (imports triton: load it through
`kernels`, lazily).

One launch over (query tile, head, prompt): a program holds BLOCK_M queries of one head of one
prompt and streams that prompt's keys and values in tiles of BLOCK_N with an online softmax
(running max and sum in float32, exp2 in log2 units). Key tiles wholly below the diagonal are
unmasked; the tiles the diagonal crosses are masked causally; tiles above it are never loaded.
GQA reads K/V head h // group for query head h. Query tiles run longest first (the last tiles
of a prompt see the most keys), so the short ones fill the tail. Programs past a prompt's end
return at once. Knows nothing of caches: K/V come packed, as the prefill computed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class PrefillConfig:
    """Launch shape of the prefill attention kernel."""

    block_m: int = 128         # queries per program
    block_n: int = 64          # keys per loop step
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "num_warps", "num_stages"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"PrefillConfig.{name} must be positive, got {value}")
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"PrefillConfig.{name} must be a power of two >= 16, got {value}")
        if self.block_m % self.block_n:
            raise ValueError(f"PrefillConfig: block_m ({self.block_m}) must be a multiple of "
                             f"block_n ({self.block_n}), so unmasked key tiles end at the diagonal")


# Measured best on an H200 (benchmarks/results/paged_attention_h200.md, Llama-3-8B heads, 32 and
# 8 prompts of 100-1024 tokens): 64 queries x 32 keys, 4 warps, 3 stages, 450 / 239 us against
# 543 / 257 us for the Triton tutorial's 128 x 64 x 8 warps.
GPU_DEFAULT = PrefillConfig(block_m=64, block_n=32, num_warps=4, num_stages=3)
# The interpreter runs each program in Python: fewer, larger programs are faster there.
INTERPRETER = PrefillConfig(block_m=64, block_n=32, num_warps=4, num_stages=1)


def choose_config(sm_count: int, head_dim: int, element_size: int, on_gpu: bool) -> PrefillConfig:
    """The launch shape: GPU_DEFAULT on a GPU (fewer stages where wide elements or heads would
    overflow shared memory), INTERPRETER elsewhere. sm_count does not change it yet."""
    if not on_gpu:
        return INTERPRETER
    cfg = GPU_DEFAULT
    tile_bytes = (cfg.block_m + 2 * (cfg.num_stages - 1) * cfg.block_n) * head_dim * element_size
    if tile_bytes > 192 * 1024:
        cfg = PrefillConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    return cfg


@triton.jit
def _attend(q, k_base, v_base, s_kt, s_vt, lo, hi, n, offs_m, d, m_i, l_i, acc, qk_scale,
            BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_F32: tl.constexpr,
            PRECISION: tl.constexpr):
    """Fold keys [lo, hi) into the running (max, sum, acc) of the queries offs_m."""
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        rows = offs_n.to(tl.int64)
        if CAUSAL:
            k = tl.load(k_base + rows[:, None] * s_kt + d[None, :], mask=(offs_n < n)[:, None],
                        other=0.0)
            v = tl.load(v_base + rows[:, None] * s_vt + d[None, :], mask=(offs_n < n)[:, None],
                        other=0.0)
        else:           # wholly below the diagonal and inside the prompt
            k = tl.load(k_base + rows[:, None] * s_kt + d[None, :])
            v = tl.load(v_base + rows[:, None] * s_vt + d[None, :])
        if DOT_F32:     # the CPU interpreter's bf16 dot is wrong (triton 3.9): same math in f32
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale   # [M, N], log2 units
        if CAUSAL:
            keep = (offs_n[None, :] <= offs_m[:, None]) & (offs_n < n)[None, :]
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_base.dtype.element_ty).to(v.dtype), v,
                                            input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


# m_tiles varies with the longest prompt of each batch: unspecialised, so a new batch shape
# never compiles a second variant (Triton keys ints on ==1 and %16 otherwise)
@triton.jit(do_not_specialize=["m_tiles"])
def _prefill_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr, qk_scale,
                    s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_ot, s_oh, m_tiles,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    tile = m_tiles - 1 - tl.program_id(0)         # longest query tiles first
    h = tl.program_id(1)
    seq = tl.program_id(2)
    first = tl.load(cu_ptr + seq)
    n = tl.load(cu_ptr + seq + 1) - first
    m0 = tile * BLOCK_M
    if m0 < n:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        tok = first.to(tl.int64) + offs_m.to(tl.int64)
        q = tl.load(q_ptr + tok[:, None] * s_qt + h * s_qh + d[None, :],
                    mask=(offs_m < n)[:, None], other=0.0)                # [M, D]
        if DOT_F32:
            q = q.to(tl.float32)
        hk = h // GROUP
        k_base = k_ptr + first.to(tl.int64) * s_kt + hk * s_kh
        v_base = v_ptr + first.to(tl.int64) * s_vt + hk * s_vh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # keys [0, m0): before every query of the tile; then the diagonal's tiles, masked
        m_i, l_i, acc = _attend(q, k_base, v_base, s_kt, s_vt, 0, m0, n, offs_m, d, m_i, l_i, acc,
                                qk_scale, BLOCK_N, False, DOT_F32, PRECISION)
        m_i, l_i, acc = _attend(q, k_base, v_base, s_kt, s_vt, m0, tl.minimum(m0 + BLOCK_M, n),
                                n, offs_m, d, m_i, l_i, acc, qk_scale, BLOCK_N, True, DOT_F32,
                                PRECISION)
        o = acc / l_i[:, None]
        tl.store(o_ptr + tok[:, None] * s_ot + h * s_oh + d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=(offs_m < n)[:, None])


def prefill_attention(q, k, v, cu_seqlens, out, *, max_seqlen: int, scale: float,
                      cfg: PrefillConfig = GPU_DEFAULT) -> torch.Tensor:
    """Launch over (query tiles of the longest prompt, heads, prompts); shapes were checked by
    the caller. float32 inputs take IEEE float32 dots (not TF32), so a float32 model keeps its
    precision on the GPU."""
    tokens, num_heads, head_dim = q.shape
    prompts = cu_seqlens.numel() - 1
    if tokens == 0:
        return out
    m_tiles = triton.cdiv(max_seqlen, cfg.block_m)
    # bf16/fp16 dots ignore it ("tf32" is tl.dot's own default); float32 ones stay IEEE
    precision = "ieee" if q.dtype == torch.float32 or not q.is_cuda else "tf32"
    _prefill_kernel[(m_tiles, num_heads, prompts)](
        q, k, v, out, cu_seqlens, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), m_tiles,
        GROUP=num_heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, DOT_F32=not q.is_cuda, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
