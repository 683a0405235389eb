"""Split-KV decode attention in Triton (imports triton: load it through `kernels`, lazily).

Two launches: a split kernel over (batch x kv_heads, splits) where each program streams one
chunk of one request's K/V for all query heads of one KV head (the GQA group is the M side of
the dot products), then a combine kernel that merges the splits by their log-sum-exp. With one
split the first kernel writes the output directly and the combine is skipped. With
`fused_combine` there is one launch: each split counts itself in on an atomic counter and the
last of a request's splits to finish merges them. Request b's keys
are positions [context_starts[b], context_lens[b]) (starts default to 0; a left-padded cache, as
transformers' static cache keeps it, starts after its padding). Programs whose chunk lies outside
that range return before loading anything, and loads outside it are masked, so no byte of
padding is read. With a block table (PAGED) the caches are block pools [blocks, kv_heads,
block_size, head_dim] and each key's row is block_tables[b, p // block_size], offset p %
block_size; splits and tiles are planned over positions exactly as for a static cache, so
partitions work the same. Knows nothing of partitions beyond the SM count it sizes its grid for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionConfig:
    """Launch shape of the split kernel."""

    block_n: int = 64          # keys per loop step
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 8   # target programs per SM when choosing the split count
    min_chunk: int = 256       # never split a request into chunks shorter than this
    kv_eviction: str = ""      # L2 policy for K/V loads: "" (default) or "evict_first"
    fused_combine: bool = False  # the last split of a request to finish merges them (no 2nd launch)


# Measured (benchmarks/kernels/attention_tuning.py, H100 and H200, 2026-11-21): on the whole
# GPU, 128-key blocks in 3 stages with few programs per SM were the best launch shape over the
# seven benchmark shapes on both chips (geometric mean within 0.5% / 1.8% of each shape's
# best); on 32-SM partitions the default (64-key blocks, 8 programs per SM) stays within 3%.
WHOLE_GPU = AttentionConfig(block_n=128, num_stages=3, programs_per_sm=2)
WHOLE_GPU_MIN_SMS = 100


# Shared memory the K/V pipeline may take: Hopper gives a block 227 KiB, and Triton adds its own
# (a float32 cache at the WHOLE_GPU shape asked for 278,784 bytes on an H100 and did not launch).
KV_PIPELINE_BYTES = 192 * 1024


def kv_pipeline_bytes(cfg: AttentionConfig, head_dim: int, element_size: int) -> int:
    """Shared memory of the K and V tiles in flight: (stages - 1) buffers of block_n keys."""
    return 2 * (cfg.num_stages - 1) * cfg.block_n * head_dim * element_size


def choose_config(sm_count: int, head_dim: int = 128, element_size: int = 2) -> AttentionConfig:
    """The launch shape for a grid of sm_count SMs (see WHOLE_GPU), with fewer stages, then
    smaller key blocks, where wide elements (a float32 cache) would overflow shared memory."""
    cfg = WHOLE_GPU if sm_count >= WHOLE_GPU_MIN_SMS else AttentionConfig()
    while kv_pipeline_bytes(cfg, head_dim, element_size) > KV_PIPELINE_BYTES:
        if cfg.num_stages > 2:
            cfg = replace(cfg, num_stages=cfg.num_stages - 1)
        elif cfg.block_n > 16:
            cfg = replace(cfg, block_n=cfg.block_n // 2)
        else:
            break
    return cfg


def fit_block(cfg: AttentionConfig, block_size: int) -> AttentionConfig:
    """cfg with its key block a divisor or a multiple of a paged cache's block size, so each
    tile of keys is whole blocks or part of one (each block of one head is contiguous): the
    largest power of two <= cfg.block_n (and >= 16, the smallest dot) dividing block_size when
    cfg.block_n neither divides nor is divided by it; cfg as it is where none does (the kernel
    then gathers each key's row from the table, correct for any block size)."""
    if cfg.block_n % block_size == 0 or block_size % cfg.block_n == 0:
        return cfg
    block_n = cfg.block_n
    while block_n >= 16 and block_size % block_n:
        block_n //= 2
    return replace(cfg, block_n=block_n) if block_n >= 16 else cfg


def plan_splits(batch: int, num_kv_heads: int, max_context: int, sm_count: int,
                cfg: AttentionConfig) -> tuple[int, int]:
    """(num_splits, chunk_len): enough programs to fill sm_count SMs, chunks a multiple of block_n."""
    if min(batch, num_kv_heads, max_context, sm_count) <= 0:
        raise ValueError("plan_splits needs positive batch, kv heads, context and sm_count")
    base = batch * num_kv_heads
    want = max(1, math.ceil(cfg.programs_per_sm * sm_count / base))
    most = max(1, math.ceil(max_context / max(cfg.min_chunk, cfg.block_n)))
    splits = min(want, most)
    chunk = math.ceil(max_context / splits)
    chunk = math.ceil(chunk / cfg.block_n) * cfg.block_n
    return math.ceil(max_context / chunk), chunk


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, lens_ptr, starts_ptr, bt_ptr, o_ptr, po_ptr, plse_ptr,
                  lock_ptr, qk_scale,
                  s_qb, s_qh, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_ob, s_oh, s_bt,
                  num_kv_heads, num_heads, chunk_len, max_splits,
                  GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, DOT_F32: tl.constexpr,
                  HAS_STARTS: tl.constexpr, KV_EVICT: tl.constexpr, FUSED: tl.constexpr,
                  PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // num_kv_heads
    hkv = pid % num_kv_heads
    length = tl.load(lens_ptr + b)
    end = tl.minimum(split * chunk_len + chunk_len, length)
    start = split * chunk_len
    if HAS_STARTS:
        start = tl.maximum(start, tl.load(starts_ptr + b))
    if start < end:
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = hkv * GROUP + g
        q = tl.load(q_ptr + b * s_qb + heads[:, None] * s_qh + d[None, :],
                    mask=(g < GROUP)[:, None], other=0.0)           # [GROUP_PAD, D]
        if DOT_F32:
            q = q.to(tl.float32)
        if PAGED:     # a block pool: the row comes from the block table, per key
            k_base = k_ptr + hkv * s_kh
            v_base = v_ptr + hkv * s_vh
        else:
            k_base = k_ptr + b.to(tl.int64) * s_kb + hkv * s_kh
            v_base = v_ptr + b.to(tl.int64) * s_vb + hkv * s_vh
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid = n < end
            if PAGED:
                blk = tl.load(bt_ptr + b * s_bt + n // BLOCK_SIZE, mask=valid, other=0)
                k_rows = blk.to(tl.int64) * s_kb + (n % BLOCK_SIZE) * s_ks
                v_rows = blk.to(tl.int64) * s_vb + (n % BLOCK_SIZE) * s_vs
            else:
                k_rows = n * s_ks
                v_rows = n * s_vs
            k = tl.load(k_base + k_rows[:, None] + d[None, :], mask=valid[:, None], other=0.0,
                        eviction_policy=KV_EVICT)
            v = tl.load(v_base + v_rows[:, None] + d[None, :], mask=valid[:, None], other=0.0,
                        eviction_policy=KV_EVICT)
            if DOT_F32:   # the CPU interpreter's bf16 dot is wrong (triton 3.9): same math in f32
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale   # [GROUP_PAD, BLOCK_N]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v_ptr.dtype.element_ty).to(v.dtype), v,
                                                input_precision=PRECISION)
            m_i = m_new
        head_ok = (g < GROUP)[:, None]
        if SINGLE:
            o = acc / l_i[:, None]
            tl.store(o_ptr + b * s_ob + heads[:, None] * s_oh + d[None, :],
                     o.to(o_ptr.dtype.element_ty), mask=head_ok)
        else:
            row = (b * num_heads + heads) * max_splits + split      # [GROUP_PAD]
            tl.store(po_ptr + row[:, None] * HEAD_DIM + d[None, :], acc / l_i[:, None], mask=head_ok)
            tl.store(plse_ptr + row, m_i + tl.log2(l_i), mask=g < GROUP)
            if FUSED:
                first = 0
                if HAS_STARTS:
                    first = tl.load(starts_ptr + b) // chunk_len
                used = tl.cdiv(length, chunk_len) - first           # splits that ran
                tl.debug_barrier()      # every thread's partial is written before the release
                arrived = tl.atomic_add(lock_ptr + pid, 1, sem="acq_rel")
                tl.debug_barrier()
                if arrived == used - 1:    # the last split in: every partial is visible
                    _merge_splits(po_ptr, plse_ptr, o_ptr, b * s_ob + heads * s_oh, row - split,
                                  first, first + used, g < GROUP, GROUP_PAD, HEAD_DIM)
                    tl.atomic_xchg(lock_ptr + pid, 0)    # leave the counter as it was found


@triton.jit
def _merge_splits(po_ptr, plse_ptr, o_ptr, o_off, row0, first, last, head_ok,
                  GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    """o[heads] = the log-sum-exp weighted mean of the partials of splits [first, last)."""
    d = tl.arange(0, HEAD_DIM)
    m = tl.load(plse_ptr + row0 + first, mask=head_ok, other=0.0)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for s in range(first, last):
        lse = tl.load(plse_ptr + row0 + s, mask=head_ok, other=0.0)
        part = tl.load(po_ptr + (row0 + s)[:, None] * HEAD_DIM + d[None, :],
                       mask=head_ok[:, None], other=0.0)
        m_new = tl.maximum(m, lse)
        keep, w = tl.exp2(m - m_new), tl.exp2(lse - m_new)
        acc = acc * keep[:, None] + part * w[:, None]
        l_sum = l_sum * keep + w
        m = m_new
    tl.store(o_ptr + o_off[:, None] + d[None, :], (acc / l_sum[:, None]).to(o_ptr.dtype.element_ty),
             mask=head_ok[:, None])


@triton.jit
def _combine_kernel(po_ptr, plse_ptr, lens_ptr, starts_ptr, o_ptr, s_ob, s_oh, num_heads,
                    chunk_len, max_splits, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                    HAS_STARTS: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // num_heads
    h = pid % num_heads
    length = tl.load(lens_ptr + b)
    s = tl.arange(0, SPLITS_PAD)
    used = s < tl.cdiv(length, chunk_len)
    if HAS_STARTS:   # splits wholly before the first key wrote nothing
        used = used & (s >= tl.load(starts_ptr + b) // chunk_len)
    d = tl.arange(0, HEAD_DIM)
    row = pid * max_splits + s
    lse = tl.load(plse_ptr + row, mask=used, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(used, tl.exp2(lse - m), 0.0)
    part = tl.load(po_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=used[:, None], other=0.0)
    o = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(o_ptr + b * s_ob + h * s_oh + d, o.to(o_ptr.dtype.element_ty))


def decode_attention(q, k_cache, v_cache, context_lens, out, *, sm_count: int, scale: float,
                     max_context: int, cfg: AttentionConfig = AttentionConfig(),
                     context_starts=None, locks=None, block_tables=None):
    """Launch the split kernel, then the combine kernel unless the config fuses it.

    A fused combine counts finished splits in one int32 per (request, KV head): `locks` when
    given (zero, at least batch x kv_heads of them, used by one launch at a time: the kernel
    leaves them at zero), else a torch.zeros before the launch. With `block_tables` the caches
    are block pools [blocks, kv_heads, block_size, head_dim]. Shapes were checked by the caller.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    splits, chunk = plan_splits(batch, num_kv_heads, max_context, sm_count, cfg)
    single = splits == 1
    fused = cfg.fused_combine and not single
    has_starts = context_starts is not None
    starts = context_starts if has_starts else context_lens        # unused placeholder
    part_o = part_lse = counters = out                            # unused placeholders
    if not single:
        part_o = torch.empty((batch * num_heads * splits, head_dim), device=q.device,
                             dtype=torch.float32)
        part_lse = torch.empty((batch * num_heads * splits,), device=q.device, dtype=torch.float32)
    if fused:
        if locks is not None and (locks.dtype != torch.int32 or
                                  locks.numel() < batch * num_kv_heads):
            raise ValueError(f"decode_attention: locks must be int32 with at least "
                             f"{batch * num_kv_heads} entries, got {locks.dtype} x "
                             f"{locks.numel()}")
        counters = locks if locks is not None else torch.zeros(
            (batch * num_kv_heads,), device=q.device, dtype=torch.int32)
    paged = block_tables is not None
    tables = block_tables if paged else context_lens               # unused placeholder
    _split_kernel[(batch * num_kv_heads, splits)](
        q, k_cache, v_cache, context_lens, starts, tables, out, part_o, part_lse, counters,
        scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        tables.stride(0), num_kv_heads, num_heads, chunk, splits,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_N=cfg.block_n, SINGLE=single, DOT_F32=not q.is_cuda, HAS_STARTS=has_starts,
        KV_EVICT=cfg.kv_eviction, FUSED=fused, PAGED=paged,
        BLOCK_SIZE=k_cache.shape[2] if paged else 1,
        # float32 stays IEEE on the GPU (tl.dot's default is tf32); bf16/fp16 dots ignore it
        PRECISION="ieee" if q.dtype == torch.float32 or not q.is_cuda else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    if not single and not fused:
        _combine_kernel[(batch * num_heads,)](
            part_o, part_lse, context_lens, starts, out, out.stride(0), out.stride(1), num_heads,
            chunk, splits, SPLITS_PAD=max(2, triton.next_power_of_2(splits)), HEAD_DIM=head_dim,
            HAS_STARTS=has_starts, num_warps=4)
    return out
