"""Persistent Triton matmul sized to an SM partition (imports triton: load it lazily).

y[tokens, n] = x[tokens, k] @ w[n, k]^T. The grid has one program per SM of the partition;
each walks the work units (output tile x K slice) with a stride of the grid. Tile shape and
split-K come from `pipedecode.runtime.kernels.tiling`, chosen per (tokens, n, k, sm_count) so
the units fill whole waves of the partition. With split-K the partial sums go to a float32
workspace and a small reduce kernel adds them and applies the epilogue. In PAIR mode (the
gate/up projection) each unit computes the same columns of the gate and the up halves of the
weight and stores silu(gate) * up.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pipedecode.runtime.kernels.tiling import MatmulConfig


@triton.jit
def _persistent_kernel(a_ptr, w_ptr, c_ptr, bias_ptr, ws_ptr, M, N, K, s_am, s_wn, s_cm,
                       k_per_split, pair_offset, num_pid_m, num_pid_n, num_units,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                       PAIR: tl.constexpr, DOT_F32: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    for unit in range(pid, num_units, nprog):
        tile = unit // SPLIT_K
        ks = unit % SPLIT_K
        # grouped ordering: GROUP_M row-tiles share each weight column block while it is in L2
        width = GROUP_M * num_pid_n
        first_m = (tile // width) * GROUP_M
        rows = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % width) % rows
        pid_n = (tile % width) // rows
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        k_lo = ks * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        a_p = a_ptr + rm[:, None].to(tl.int64) * s_am + (k_lo + rk)[None, :]
        w_p = w_ptr + rn[:, None].to(tl.int64) * s_wn + (k_lo + rk)[None, :]
        acc = tl.zeros([BM, BN], tl.float32)
        if PAIR:
            u_p = w_p + pair_offset * s_wn
            acc_u = tl.zeros([BM, BN], tl.float32)
        for k0 in range(k_lo, k_hi, BK):
            if EVEN_K:   # every K slice is whole blocks: mask rows only
                a = tl.load(a_p, mask=(rm < M)[:, None], other=0.0)
                w = tl.load(w_p, mask=(rn < N)[:, None], other=0.0)
            else:
                kmask = (k0 + rk) < k_hi
                a = tl.load(a_p, mask=(rm < M)[:, None] & kmask[None, :], other=0.0)
                w = tl.load(w_p, mask=(rn < N)[:, None] & kmask[None, :], other=0.0)
            if DOT_F32:   # the CPU interpreter's bf16 dot is wrong (triton 3.9): same math in f32
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, tl.trans(w), acc)
            if PAIR:
                if EVEN_K:
                    u = tl.load(u_p, mask=(rn < N)[:, None], other=0.0)
                else:
                    u = tl.load(u_p, mask=(rn < N)[:, None] & kmask[None, :], other=0.0)
                if DOT_F32:
                    u = u.to(tl.float32)
                acc_u = tl.dot(a, tl.trans(u), acc_u)
                u_p += BK
            a_p += BK
            w_p += BK
        cmask = (rm < M)[:, None] & (rn < N)[None, :]
        if SPLIT_K == 1:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            if PAIR:
                acc = acc / (1.0 + tl.exp(-acc)) * acc_u
            tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
                     mask=cmask)
        else:
            # workspace: [SPLIT_K, M, N] (PAIR: [SPLIT_K, 2, M, N])
            slab = ks * (2 if PAIR else 1)
            base = ws_ptr + slab.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :]
            tl.store(base, acc, mask=cmask)
            if PAIR:
                tl.store(base + M * N, acc_u, mask=cmask)


@triton.jit
def _reduce_kernel(ws_ptr, c_ptr, bias_ptr, M, N, s_cm, SPLIT_K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, PAIR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    step = M * N * (2 if PAIR else 1)
    acc = tl.zeros([BLOCK], tl.float32)
    acc_u = tl.zeros([BLOCK], tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(ws_ptr + s * step + offs, mask=mask, other=0.0)
        if PAIR:
            acc_u += tl.load(ws_ptr + s * step + M * N + offs, mask=mask, other=0.0)
    col = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col, mask=mask, other=0.0).to(tl.float32)
    if PAIR:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_u
    tl.store(c_ptr + (offs // N) * s_cm + col, acc.to(c_ptr.dtype.element_ty), mask=mask)


def matmul(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, bias, cfg: MatmulConfig,
           sm_count: int, pair: bool) -> torch.Tensor:
    """Launch on a grid of min(sm_count, units) programs; shapes were checked by the caller."""
    m, k = x.shape
    n = out.shape[1]
    num_pid_m, num_pid_n = triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    units = num_pid_m * num_pid_n * cfg.split_k
    ws = out
    if cfg.split_k > 1:
        ws = torch.empty((cfg.split_k * (2 if pair else 1) * m * n,), device=x.device,
                         dtype=torch.float32)
    has_bias = bias is not None
    _persistent_kernel[(min(units, sm_count * cfg.programs_per_sm),)](
        x, weight, out, bias if has_bias else out, ws, m, n, k, x.stride(0), weight.stride(0),
        out.stride(0), k_per_split, n, num_pid_m, num_pid_n, units,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, SPLIT_K=cfg.split_k, GROUP_M=8,
        HAS_BIAS=has_bias, PAIR=pair, DOT_F32=not x.is_cuda,
        EVEN_K=k_per_split * cfg.split_k == k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.split_k > 1:
        block = 1024
        _reduce_kernel[(triton.cdiv(m * n, block),)](
            ws, out, bias if has_bias else out, m, n, out.stride(0), SPLIT_K=cfg.split_k,
            HAS_BIAS=has_bias, PAIR=pair, BLOCK=block, num_warps=4)
    return out
