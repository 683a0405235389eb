"""Split-KV decode attention for Hopper: TMA into an mbarrier ring, wgmma, one warp feeding four.

Same function and API family as `_attention.decode_attention` (split-KV, the GQA group on one
side of the products, context_lens counting the current token, context_starts for left-padded
caches, a log-sum-exp combine of the splits, reusing `_attention._combine_kernel`), over two cache
layouts: contiguous `[batch, kv_heads, max_ctx, head_dim]` and paged `[num_blocks, kv_heads,
block_size, head_dim]` with `block_tables [batch, max_blocks]` (token p of request b sits in block
`block_tables[b, p // block_size]` at offset `p % block_size`).

Why Gluon and not CUDA C++ through NVRTC: the per-SM ceiling is the load path (HOPPER-FACTS
section 5), and Gluon exposes exactly the pieces that lift it (`tma.async_copy_global_to_shared`,
mbarriers, `warpgroup_mma`, warp specialization) while Triton still builds the tensor maps,
picks wgmma descriptors and swizzles, and launches through the machinery the other kernels use
(CUDA graphs, the caching allocator, no new build or runtime dependency). NVRTC would add
cuda-python's compiler to the runtime path and hand-written tensor maps and wgmma descriptors.

Work: one item = (request, KV head, split); programs stride over the items (`num_ctas` of them:
persistent; or one program per item). Each program is two partitions. One producer warp walks the
program's items tile by tile (`block_n` keys) and TMAs each tile's K and V as [block_n, 64]
column panels into a ring of `num_slots` panel slots (the paged layout: one box per cache block,
several per panel), running ahead across item boundaries; boxes outside an item's keys re-read
its nearest box (an L2 hit), so every slot expects the same byte count. Four consumer warps (one
warpgroup) take the keys as the M side of both products: S^T = K q^T ([block_n, group_pad]), an
online softmax over the key axis in float32, then O^T += V^T P^T with P^T staged in shared
memory. Why keys as M: wgmma's M is 64 per warpgroup, so the GQA group as M would pad 4 heads to
64 (16x the tensor-core work, which competes with a co-resident GEMM), while as N it pads to 8;
and mma_v2 (M 16) would pull K and V through registers (ldmatrix), a second pass over every byte
in shared memory, where wgmma reads both straight from the TMA buffers. Rows outside an item's
keys are masked in S and zeroed in V (only on an item's first and last tiles). The shared memory
is the ring plus q and P (`smem_bytes`), bounded by `smem_budget_bytes` so one program fits
beside a persistent GEMM CTA per SM (registers: `LaunchPlan.registers_per_cta`). Written against
Triton 3.6's Gluon (`tma.async_copy_global_to_shared`, `gl.thread_barrier`; later versions
renamed both): `tma_attention_support` says where it runs. Knows nothing of partitions beyond
the SM count it sizes its grid for.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from pipedecode.errors import PipedecodeError
from pipedecode.runtime.kernels._attention_tma_plan import (  # noqa: F401 (re-exported)
    CONSUMER_WARPS, PANEL_COLS, PRODUCER_REGS, CacheGeometry, LaunchPlan, TmaAttentionConfig,
    cache_geometry, choose_config, plan_launch, smem_bytes)

try:
    import triton
    from triton.compiler.errors import CompilationError
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    _GLUON_PROBLEM = None
    if not hasattr(tma, "async_copy_global_to_shared") or not hasattr(gl, "thread_barrier"):
        _GLUON_PROBLEM = (f"triton {triton.__version__}'s Gluon renamed the TMA copy or the CTA "
                          f"barrier this kernel uses (it is written for triton 3.6)")
except ImportError as exc:    # no triton, or one without Gluon: the kernel below is never called
    _GLUON_PROBLEM = f"triton's Gluon dialect is not importable ({exc})"
    gluon = SimpleNamespace(jit=lambda fn: fn)
    gl = SimpleNamespace(constexpr=lambda value=None: value)


class TmaAttentionUnavailableError(PipedecodeError):
    """The Hopper TMA decode attention cannot run here; use the Triton kernel (the message says
    why)."""


LOG2E = 1.4426950408889634
PANEL = gl.constexpr(PANEL_COLS)


@gluon.jit
def _item_range(w, num_bh, lens_ptr, starts_ptr, num_kv_heads, chunk_len,
                HAS_STARTS: gl.constexpr):
    """Keys [lo, hi) of item w = split * num_bh + request * kv_heads + kv_head."""
    split = w // num_bh
    b = (w % num_bh) // num_kv_heads
    lo = split * chunk_len
    if HAS_STARTS:
        lo = gl.maximum(lo, gl.load(starts_ptr + b))
    hi = gl.minimum(split * chunk_len + chunk_len, gl.load(lens_ptr + b))
    return lo, hi


@gluon.jit
def _seek(w, step, num_items, num_bh, lens_ptr, starts_ptr, num_kv_heads, chunk_len,
          HAS_STARTS: gl.constexpr):
    """The first item w, w + step, ... with keys (or w >= num_items), and its key range."""
    lo = w * 0
    hi = w * 0
    while (w < num_items) & (lo >= hi):
        lo, hi = _item_range(w, num_bh, lens_ptr, starts_ptr, num_kv_heads, chunk_len,
                             HAS_STARTS)
        if lo >= hi:
            w += step
    return w, lo, hi


@gluon.jit
def _producer(k_desc, v_desc, ring, ready, empty, lens_ptr, starts_ptr, tables_ptr, s_tb,
              page_rows, head_rows, num_kv_heads, chunk_len, num_items, num_bh,
              BLOCK_N: gl.constexpr, BOX_N: gl.constexpr, PAGE: gl.constexpr,
              PANELS: gl.constexpr, NUM_SLOTS: gl.constexpr, PAGED: gl.constexpr,
              HAS_STARTS: gl.constexpr):
    """One warp: per tile, K panels then V panels into the next free ring slots."""
    NB: gl.constexpr = BLOCK_N // BOX_N
    boxes: gl.constexpr = gl.BlockedLayout([NB], [32], [1], [0])   # every lane holds all NB
    step = gl.num_programs(0)
    w, lo, hi = _seek(gl.program_id(0), step, num_items, num_bh, lens_ptr, starts_ptr,
                      num_kv_heads, chunk_len, HAS_STARTS)
    n = lo // BLOCK_N * BLOCK_N
    slot = w * 0
    phase = w * 0
    j = gl.arange(0, NB, layout=boxes)
    while w < num_items:
        bh = w % num_bh
        b = bh // num_kv_heads
        h = bh % num_kv_heads
        # plan.tile_box_positions: boxes outside [lo, hi) re-read the nearest one inside
        first = n + gl.maximum(lo - n, 0) // BOX_N * BOX_N
        last = n + (gl.minimum(hi - n, BLOCK_N) - 1) // BOX_N * BOX_N
        pos = gl.minimum(gl.maximum(n + j * BOX_N, first), last)
        if PAGED:
            page = gl.load(tables_ptr + b * s_tb + pos // PAGE)
            rows = page * page_rows + h * head_rows + pos % PAGE
        else:
            rows = b * page_rows + h * head_rows + pos
        for sub in gl.static_range(2 * PANELS):
            mbarrier.wait(empty.index(slot), phase ^ 1)     # a fresh barrier passes parity 1
            bar = ready.index(slot)
            mbarrier.expect(bar, BLOCK_N * PANEL * k_desc.dtype.primitive_bitwidth // 8)
            for jj in gl.static_range(NB):
                row = gl.sum(gl.where(j == jj, rows, 0), axis=0)
                dst = ring.index(slot).slice(jj * BOX_N, BOX_N)
                if sub < PANELS:
                    tma.async_copy_global_to_shared(k_desc, [row, sub * PANEL], bar, dst)
                else:
                    tma.async_copy_global_to_shared(v_desc, [row, (sub - PANELS) * PANEL], bar,
                                                    dst)
            slot += 1
            if slot == NUM_SLOTS:
                slot = 0
                phase ^= 1
        n += BLOCK_N
        if n >= hi:
            w, lo, hi = _seek(w + step, step, num_items, num_bh, lens_ptr, starts_ptr,
                              num_kv_heads, chunk_len, HAS_STARTS)
            n = lo // BLOCK_N * BLOCK_N


@gluon.jit
def _load_q(q_ptr, q_smem, w, num_bh, num_kv_heads, s_qb, s_qh, GROUP: gl.constexpr,
            GROUP_PAD: gl.constexpr, PANELS: gl.constexpr, num_warps: gl.constexpr):
    """q rows of item w's GQA group into q_smem [PANELS, GROUP_PAD, 64] (padding rows zero)."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    bh = w % num_bh
    g = gl.arange(0, GROUP_PAD, layout=gl.SliceLayout(1, layout))
    d = gl.arange(0, PANEL, layout=gl.SliceLayout(0, layout))
    heads = (bh % num_kv_heads) * GROUP + g
    base = q_ptr + (bh // num_kv_heads).to(gl.int64) * s_qb + heads[:, None] * s_qh + d[None, :]
    for c in gl.static_range(PANELS):
        q_smem.index(c).store(gl.load(base + c * PANEL, mask=(g < GROUP)[:, None], other=0.0))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def _store_item(o, c: gl.constexpr, l_sum, m_i, w, num_bh, num_kv_heads, num_heads, num_splits,
                o_ptr, s_ob, s_oh, po_ptr, plse_ptr, mma: gl.constexpr, GROUP: gl.constexpr,
                GROUP_PAD: gl.constexpr, HEAD_DIM: gl.constexpr, SINGLE: gl.constexpr):
    """Panel c of O^T ([64, GROUP_PAD]) normalized into out, or the split's partial and (with
    panel 0) its log2-sum-exp, laid out as `_attention._combine_kernel` reads them."""
    split = w // num_bh
    bh = w % num_bh
    b = bh // num_kv_heads
    g = gl.arange(0, GROUP_PAD, layout=gl.SliceLayout(0, mma))
    d = c * PANEL + gl.arange(0, PANEL, layout=gl.SliceLayout(1, mma))
    heads = (bh % num_kv_heads) * GROUP + g
    ok = g < GROUP
    o = o / l_sum[None, :]
    if SINGLE:
        ptr = o_ptr + b.to(gl.int64) * s_ob + heads[None, :] * s_oh + d[:, None]
        gl.store(ptr, o.to(o_ptr.dtype.element_ty), mask=ok[None, :])
    else:
        row = (b * num_heads + heads) * num_splits + split
        gl.store(po_ptr + row.to(gl.int64)[None, :] * HEAD_DIM + d[:, None], o, mask=ok[None, :])
        if c == 0:
            gl.store(plse_ptr + row, m_i + gl.log2(l_sum), mask=ok)


@gluon.jit
def _release(empty, slot, phase, NUM_SLOTS: gl.constexpr):
    mbarrier.arrive(empty.index(slot))      # one thread; callers pass a CTA barrier first
    slot += 1
    if slot == NUM_SLOTS:
        slot = 0
        phase ^= 1
    return slot, phase


@gluon.jit
def _wait_panels(ready, slot, phase, count: gl.constexpr, NUM_SLOTS: gl.constexpr):
    for c in gl.static_range(count):
        wrapped = (slot + c >= NUM_SLOTS).to(gl.int32)
        mbarrier.wait(ready.index((slot + c) % NUM_SLOTS), phase ^ wrapped)


@gluon.jit
def _zero_outside(panel, n0, lo, hi, BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """Zero the rows of a V panel outside keys [lo, hi): they hold other keys' data (or NaN),
    and 0 * NaN in P^T V would poison the output."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    keys = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
    v = panel.load(layout)
    panel.store(gl.where(((keys >= lo) & (keys < hi))[:, None], v, gl.zeros_like(v)))


@gluon.jit
def _scores(ring, q_smem, ready, empty, slot, phase, mma: gl.constexpr, BLOCK_N: gl.constexpr,
            GROUP_PAD: gl.constexpr, PANELS: gl.constexpr, NUM_SLOTS: gl.constexpr):
    """S^T = K q^T ([BLOCK_N, GROUP_PAD]) over the tile's K panels, which it then releases."""
    _wait_panels(ready, slot, phase, PANELS, NUM_SLOTS)
    s = gl.zeros([BLOCK_N, GROUP_PAD], gl.float32, layout=mma)
    for c in gl.static_range(PANELS):
        s = warpgroup_mma(ring.index((slot + c) % NUM_SLOTS), q_smem.index(c).permute((1, 0)), s,
                          use_acc=c > 0, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    gl.thread_barrier()
    for c in gl.static_range(PANELS):
        slot, phase = _release(empty, slot, phase, NUM_SLOTS)
    return s, slot, phase


@gluon.jit
def _accumulate(ring, p_smem, ready, empty, slot, phase, o0, o1, n0, lo, hi,
                BLOCK_N: gl.constexpr, PANELS: gl.constexpr, NUM_SLOTS: gl.constexpr,
                num_warps: gl.constexpr):
    """O^T += V^T P^T per V panel (o0: head dims 0-63, o1: 64-127), then release the panels.
    p_smem was just stored by every thread: the fence and barrier order it before the wgmma."""
    _wait_panels(ready, slot, phase, PANELS, NUM_SLOTS)
    if (n0 < lo) | (n0 + BLOCK_N > hi):
        for c in gl.static_range(PANELS):
            _zero_outside(ring.index((slot + c) % NUM_SLOTS), n0, lo, hi, BLOCK_N, num_warps)
    fence_async_shared()
    gl.thread_barrier()
    o0 = warpgroup_mma(ring.index(slot).permute((1, 0)), p_smem.permute((1, 0)), o0,
                       is_async=True)
    if PANELS == 2:
        o1 = warpgroup_mma(ring.index((slot + 1) % NUM_SLOTS).permute((1, 0)),
                           p_smem.permute((1, 0)), o1, is_async=True)
        o0, o1 = warpgroup_mma_wait(num_outstanding=0, deps=(o0, o1))
    else:
        o0 = warpgroup_mma_wait(num_outstanding=0, deps=(o0,))
    gl.thread_barrier()
    for c in gl.static_range(PANELS):
        slot, phase = _release(empty, slot, phase, NUM_SLOTS)
    return o0, o1, slot, phase


@gluon.jit
def _consumer(q_ptr, ring, q_smem, p_smem, ready, empty, lens_ptr, starts_ptr, o_ptr, po_ptr,
              plse_ptr, qk_scale, s_qb, s_qh, s_ob, s_oh, num_kv_heads, num_heads, chunk_len,
              num_splits, num_items, num_bh, GROUP: gl.constexpr, GROUP_PAD: gl.constexpr,
              HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, NUM_SLOTS: gl.constexpr,
              HAS_STARTS: gl.constexpr, SINGLE: gl.constexpr, num_warps: gl.constexpr):
    """One warpgroup: per tile S^T = K q^T, the online softmax over keys, O^T += V^T P^T."""
    PANELS: gl.constexpr = HEAD_DIM // PANEL
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, GROUP_PAD, 16])
    step = gl.num_programs(0)
    w, lo, hi = _seek(gl.program_id(0), step, num_items, num_bh, lens_ptr, starts_ptr,
                      num_kv_heads, chunk_len, HAS_STARTS)
    n0 = lo // BLOCK_N * BLOCK_N
    if w < num_items:
        _load_q(q_ptr, q_smem, w, num_bh, num_kv_heads, s_qb, s_qh, GROUP, GROUP_PAD, PANELS,
                num_warps)
    m_i = gl.full([GROUP_PAD], float("-inf"), gl.float32, layout=gl.SliceLayout(0, mma))
    l_acc = gl.zeros([BLOCK_N, GROUP_PAD], gl.float32, layout=mma)   # summed over keys at the end
    o0 = gl.zeros([PANEL, GROUP_PAD], gl.float32, layout=mma)        # O^T, head dims 0-63
    o1 = gl.zeros([PANEL, GROUP_PAD], gl.float32, layout=mma)        # 64-127 (HEAD_DIM 128)
    slot = w * 0
    phase = w * 0
    tile_keys = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    while w < num_items:
        s, slot, phase = _scores(ring, q_smem, ready, empty, slot, phase, mma, BLOCK_N,
                                 GROUP_PAD, PANELS, NUM_SLOTS)
        keys = n0 + tile_keys
        s = gl.where(((keys >= lo) & (keys < hi))[:, None], s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=0))      # every tile holds a key of [lo, hi)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - m_new[None, :])
        l_acc = l_acc * alpha[None, :] + p
        m_i = m_new
        p_smem.store(gl.permute(p.to(p_smem.dtype), (1, 0)))
        o0, o1, slot, phase = _accumulate(ring, p_smem, ready, empty, slot, phase,
                                          o0 * alpha[None, :], o1 * alpha[None, :], n0, lo, hi,
                                          BLOCK_N, PANELS, NUM_SLOTS, num_warps)
        if n0 + BLOCK_N >= hi:      # the item's last tile: write it, go to the next item
            l_sum = gl.sum(l_acc, axis=0)
            _store_item(o0, 0, l_sum, m_i, w, num_bh, num_kv_heads, num_heads, num_splits, o_ptr,
                        s_ob, s_oh, po_ptr, plse_ptr, mma, GROUP, GROUP_PAD, HEAD_DIM, SINGLE)
            if PANELS == 2:
                _store_item(o1, 1, l_sum, m_i, w, num_bh, num_kv_heads, num_heads, num_splits,
                            o_ptr, s_ob, s_oh, po_ptr, plse_ptr, mma, GROUP, GROUP_PAD, HEAD_DIM,
                            SINGLE)
            m_i = gl.full([GROUP_PAD], float("-inf"), gl.float32, layout=gl.SliceLayout(0, mma))
            l_acc = gl.zeros([BLOCK_N, GROUP_PAD], gl.float32, layout=mma)
            o0 = gl.zeros([PANEL, GROUP_PAD], gl.float32, layout=mma)
            o1 = gl.zeros([PANEL, GROUP_PAD], gl.float32, layout=mma)
            w, lo, hi = _seek(w + step, step, num_items, num_bh, lens_ptr, starts_ptr,
                              num_kv_heads, chunk_len, HAS_STARTS)
            n0 = lo // BLOCK_N * BLOCK_N
            if w < num_items:
                _load_q(q_ptr, q_smem, w, num_bh, num_kv_heads, s_qb, s_qh, GROUP, GROUP_PAD,
                        PANELS, num_warps)
        else:
            n0 += BLOCK_N


@gluon.jit
def _decode_kernel(q_ptr, k_desc, v_desc, lens_ptr, starts_ptr, tables_ptr, o_ptr, po_ptr,
                   plse_ptr, qk_scale, s_qb, s_qh, s_ob, s_oh, s_tb, page_rows, head_rows,
                   num_kv_heads, num_heads, chunk_len, num_splits, num_items, num_bh,
                   GROUP: gl.constexpr, GROUP_PAD: gl.constexpr, HEAD_DIM: gl.constexpr,
                   BLOCK_N: gl.constexpr, BOX_N: gl.constexpr, PAGE: gl.constexpr,
                   NUM_SLOTS: gl.constexpr, PAGED: gl.constexpr, HAS_STARTS: gl.constexpr,
                   SINGLE: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr):
    PANELS: gl.constexpr = HEAD_DIM // PANEL
    dtype: gl.constexpr = k_desc.dtype
    # ring slot = [BLOCK_N, 64] with 128-byte swizzle, BLOCK_N / BOX_N TMA boxes stacked
    ring = gl.allocate_shared_memory(dtype, [NUM_SLOTS, BLOCK_N, PANEL], k_desc.layout)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([GROUP_PAD, PANEL], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [PANELS, GROUP_PAD, PANEL], q_layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([GROUP_PAD, BLOCK_N], dtype)
    p_smem = gl.allocate_shared_memory(dtype, [GROUP_PAD, BLOCK_N], p_layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_SLOTS, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_SLOTS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_SLOTS):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    fence_async_shared()
    gl.warp_specialize([
        (_consumer, (q_ptr, ring, q_smem, p_smem, ready, empty, lens_ptr, starts_ptr, o_ptr,
                     po_ptr, plse_ptr, qk_scale, s_qb, s_qh, s_ob, s_oh, num_kv_heads, num_heads,
                     chunk_len, num_splits, num_items, num_bh, GROUP, GROUP_PAD, HEAD_DIM,
                     BLOCK_N, NUM_SLOTS, HAS_STARTS, SINGLE, num_warps)),
        (_producer, (k_desc, v_desc, ring, ready, empty, lens_ptr, starts_ptr, tables_ptr, s_tb,
                     page_rows, head_rows, num_kv_heads, chunk_len, num_items, num_bh, BLOCK_N,
                     BOX_N, PAGE, PANELS, NUM_SLOTS, PAGED, HAS_STARTS)),
    ], [1], [PRODUCER_REGS])


def tma_attention_support(device=None) -> tuple[bool, str]:
    """(True, "sm_90") where the kernel can run, else (False, why)."""
    if _GLUON_PROBLEM:
        return False, _GLUON_PROBLEM
    if not torch.cuda.is_available():
        return False, "the TMA decode attention needs a CUDA GPU and none is visible"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return False, (f"the TMA decode attention needs a Hopper GPU (sm_90: wgmma, TMA); this "
                       f"one is sm_{major}{minor}")
    return True, "sm_90"


def wait_or_exit(what: str, timeout_s: float = 90.0) -> None:
    """Wait for the current stream, or end the process (exit code 3) after timeout_s: a kernel
    whose mbarrier never completes would otherwise hold the GPU until the caller's time limit
    (tests and the benchmark call this after a first launch of each variant)."""
    import os
    import time

    event = torch.cuda.Event()
    event.record()
    deadline = time.time() + timeout_s
    while not event.query():
        if time.time() > deadline:
            print(f"\nHANG: {what} did not finish in {timeout_s:.0f} s", flush=True)
            os._exit(3)
        time.sleep(0.002)


def _unsupported(q, k_cache, geom: CacheGeometry) -> str | None:
    """Why valid inputs cannot take this kernel (the caller falls back), or None."""
    if q.dtype not in (torch.bfloat16, torch.float16) or k_cache.dtype != q.dtype:
        return (f"the TMA decode attention needs bf16 or fp16 q and caches, got {q.dtype}, "
                f"{k_cache.dtype}")
    if geom.head_dim not in (64, 128):
        return f"the TMA decode attention supports head_dim 64 and 128, got {geom.head_dim}"
    if geom.group > 32:
        return f"the TMA decode attention supports GQA groups up to 32, got {geom.group}"
    bs = geom.block_size
    if bs and (bs < 8 or bs & (bs - 1)):
        return f"the TMA decode attention needs a power-of-two block size >= 8, got {bs}"
    s0, s1, s2, _ = k_cache.stride()
    if s0 % s2 or s1 % s2 or (s2 * k_cache.element_size()) % 16 or k_cache.data_ptr() % 16:
        return ("the TMA decode attention needs 16-byte aligned cache rows, and batch/block and "
                "head strides that are whole rows")
    if _descriptor_rows(k_cache) >= 2 ** 31:
        return "the TMA decode attention indexes cache rows in int32; this cache has more"
    ok, why = tma_attention_support(q.device if q.is_cuda else None)
    if not ok:
        return why
    if not (q.is_cuda and k_cache.is_cuda):
        return "the TMA decode attention needs CUDA tensors"
    return None


def _descriptor_rows(cache) -> int:
    s0, s1, s2, _ = cache.stride()
    return (cache.shape[0] - 1) * (s0 // s2) + (cache.shape[1] - 1) * (s1 // s2) + cache.shape[2]


def _descriptor(cache, box_rows: int):
    """2-D TMA view: one row per (block or request, kv head, position), boxes [box_rows, 64]."""
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8 * cache.element_size(),
                                  rank=2)
    return TensorDescriptor(cache, [_descriptor_rows(cache), cache.shape[3]],
                            [cache.stride(2), 1], [box_rows, PANEL_COLS], layout)


def decode_attention_tma(q, k_cache, v_cache, context_lens, *, out, block_tables=None,
                         context_starts=None, sm_count=None, scale=None, num_ctas=None,
                         smem_budget_bytes=None, config=None, max_context_len=None):
    """Decode attention over keys [context_starts[b], context_lens[b]) of each request.

    Contiguous caches [batch, kv_heads, max_ctx, dim], or paged [num_blocks, kv_heads,
    block_size, dim] with block_tables. sm_count sizes the grid (default: the GPU);
    num_ctas fixes a persistent grid; smem_budget_bytes bounds each program's shared memory
    (one program per SM then); config (a TmaAttentionConfig) overrides the launch shape.
    max_context_len: a host-side bound on context_lens that sizes the splits (default: the
    cache capacity). Raises ValueError for inputs that do not fit, TmaAttentionUnavailableError
    where valid inputs cannot run here (the message says why; use `kernels.decode_attention`).
    """
    geom = cache_geometry(q, k_cache, v_cache, context_lens, out, block_tables, context_starts,
                          max_context_len)
    problem = _unsupported(q, k_cache, geom)
    if problem:
        raise TmaAttentionUnavailableError(problem)
    if sm_count is not None and int(sm_count) <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    sms = int(sm_count) if sm_count else torch.cuda.get_device_properties(
        q.device).multi_processor_count
    cfg = config or choose_config(geom, smem_budget_bytes)
    plan = plan_launch(geom, cfg, sms, num_ctas)
    if smem_budget_bytes is not None and plan.smem_bytes > smem_budget_bytes:
        raise ValueError(f"config needs {plan.smem_bytes} bytes of shared memory, over "
                         f"smem_budget_bytes={smem_budget_bytes}")
    _launch(q, k_cache, v_cache, context_lens, out, block_tables, context_starts, geom, plan,
            1.0 / math.sqrt(geom.head_dim) if scale is None else float(scale))
    return out


def kernel_constexprs(geom: CacheGeometry, plan: LaunchPlan, has_starts: bool) -> dict:
    """The kernel's compile-time arguments for a launch (also the offline compile's)."""
    return dict(GROUP=geom.group, GROUP_PAD=geom.group_pad, HEAD_DIM=geom.head_dim,
                BLOCK_N=plan.block_n, BOX_N=plan.box_rows, PAGE=max(1, geom.block_size),
                NUM_SLOTS=plan.num_slots, PAGED=geom.block_size > 0, HAS_STARTS=has_starts,
                SINGLE=plan.single, PRODUCER_REGS=PRODUCER_REGS, num_warps=CONSUMER_WARPS)


def _launch(q, k_cache, v_cache, lens, out, tables, starts, geom, plan, scale):
    from pipedecode.runtime.kernels import _attention    # the combine kernel

    part_o = part_lse = out                               # unused placeholders when single
    if not plan.single:
        rows = geom.batch * geom.num_heads * plan.num_splits
        part_o = torch.empty((rows, geom.head_dim), device=q.device, dtype=torch.float32)
        part_lse = torch.empty((rows,), device=q.device, dtype=torch.float32)
    s0, s1, s2, _ = k_cache.stride()
    try:
        _decode_kernel[(plan.num_ctas,)](
            q, _descriptor(k_cache, plan.box_rows), _descriptor(v_cache, plan.box_rows), lens,
            lens if starts is None else starts, lens if tables is None else tables, out, part_o,
            part_lse, scale * LOG2E, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            0 if tables is None else tables.stride(0), s0 // s2, s1 // s2, geom.num_kv_heads,
            geom.num_heads, plan.chunk_len, plan.num_splits, plan.num_items,
            geom.batch * geom.num_kv_heads,
            **kernel_constexprs(geom, plan, starts is not None), maxnreg=plan.maxnreg)
    except CompilationError as exc:
        raise TmaAttentionUnavailableError(
            f"the Gluon kernel did not compile with triton {triton.__version__}: "
            f"{str(exc).strip().splitlines()[-1]}") from exc
    if not plan.single:
        _attention._combine_kernel[(geom.batch * geom.num_heads,)](
            part_o, part_lse, lens, lens if starts is None else starts, out, out.stride(0),
            out.stride(1), geom.num_heads, plan.chunk_len, plan.num_splits,
            SPLITS_PAD=max(2, triton.next_power_of_2(plan.num_splits)), HEAD_DIM=geom.head_dim,
            HAS_STARTS=starts is not None, num_warps=4)
