"""Persistent Triton matmul sized to an SM partition (imports triton: load it lazily).

y[tokens, n] = x[tokens, k] @ w[n, k]^T. The grid has one program per SM of the partition;
each walks the work units (output tile x K slice) with a stride of the grid. Tile shape,
split-K and the split tail come from `pipedecode.runtime.kernels.tiling`, chosen per (tokens,
n, k, sm_count) so the work fills whole waves of the partition. With split-K the partial sums go
to a float32 workspace and a small reduce kernel adds them and applies the epilogue. With a
split tail (`tiling.TailPlan`, a stream-K hybrid) the programs first run the whole waves of
tiles, then the tiles of the partial wave in K chunks: each chunk's program stores its float32
partial in the chunk's slot and counts itself in on the tile's counter, and the last chunk in
adds the others' partials and applies the epilogue (no program ever waits on another, so it also
runs in the interpreter, one program after the other). In PAIR mode (the gate/up projection)
each unit computes the same columns of the gate and the up halves of the weight and stores
silu(gate) * up. `MatmulConfig.maxnreg` (a co-resident budget, `tiling.TileBudget`) caps the
registers per thread at launch, so one program fits beside a co-resident attention CTA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pipedecode.runtime.kernels.tiling import MatmulConfig, TailPlan, tail_plan


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # grouped ordering: GROUP_M row-tiles share each weight column block while it is in L2
    width = GROUP_M * num_pid_n
    first_m = (tile // width) * GROUP_M
    rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % width) % rows, (tile % width) // rows


@triton.jit
def _mma(a_ptr, w_ptr, M, N, s_am, s_wn, pair_offset, rm, rn, k_lo, k_hi,
         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PAIR: tl.constexpr,
         DOT_F32: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc[BM, BN] (and the up half's acc_u in PAIR mode) over K columns [k_lo, k_hi)."""
    rk = tl.arange(0, BK)
    a_p = a_ptr + rm[:, None].to(tl.int64) * s_am + (k_lo + rk)[None, :]
    w_p = w_ptr + rn[:, None].to(tl.int64) * s_wn + (k_lo + rk)[None, :]
    u_p = w_p + pair_offset * s_wn
    acc = tl.zeros([BM, BN], tl.float32)
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
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
        if PAIR:
            if EVEN_K:
                u = tl.load(u_p, mask=(rn < N)[:, None], other=0.0)
            else:
                u = tl.load(u_p, mask=(rn < N)[:, None] & kmask[None, :], other=0.0)
            if DOT_F32:
                u = u.to(tl.float32)
            acc_u = tl.dot(a, tl.trans(u), acc_u, input_precision=PRECISION)
            u_p += BK
        a_p += BK
        w_p += BK
    return acc, acc_u


@triton.jit
def _epilogue(acc, acc_u, c_ptr, bias_ptr, rm, rn, M, N, s_cm, HAS_BIAS: tl.constexpr,
              PAIR: tl.constexpr, ACC: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if PAIR:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_u
    c_ptrs = c_ptr + rm[:, None] * s_cm + rn[None, :]
    cmask = (rm < M)[:, None] & (rn < N)[None, :]
    if ACC:     # c += the product, rounded once (a residual add in the epilogue)
        acc += tl.load(c_ptrs, mask=cmask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _split_tail(a_ptr, w_ptr, c_ptr, bias_ptr, part_ptr, lock_ptr, M, N, K, s_am, s_wn, s_cm,
                pair_offset, num_pid_m, num_pid_n, dp_tiles, tail_tiles, splits, chunk_iters,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                HAS_BIAS: tl.constexpr, PAIR: tl.constexpr, DOT_F32: tl.constexpr,
                EVEN_K: tl.constexpr, FIX_ROWS: tl.constexpr, ACC: tl.constexpr,
                PRECISION: tl.constexpr):
    """This program's chunks of the tail tiles (tiles dp_tiles.., see tiling.TailPlan)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # partials: [tail_tiles, splits, 1 or 2 (PAIR), BM, BN] float32, one slot per chunk
    slot_elems = BM * BN * (2 if PAIR else 1)
    offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    for u in range(pid, tail_tiles * splits, nprog):
        chunk = u // tail_tiles        # chunk-major: one wave's programs share the K range
        t_loc = u % tail_tiles
        pid_m, pid_n = _tile_coords(dp_tiles + t_loc, num_pid_m, num_pid_n, GROUP_M)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        k_lo = chunk * chunk_iters * BK        # a multiple of BK: the loads stay aligned
        acc, acc_u = _mma(a_ptr, w_ptr, M, N, s_am, s_wn, pair_offset, rm, rn, k_lo,
                          tl.minimum(k_lo + chunk_iters * BK, K), BM, BN, BK, PAIR, DOT_F32,
                          EVEN_K, PRECISION)
        mine = part_ptr + (t_loc * splits + chunk).to(tl.int64) * slot_elems
        tl.store(mine + offs, acc)
        if PAIR:
            tl.store(mine + BM * BN + offs, acc_u)
        tl.debug_barrier()      # every thread's partial is written before the release below
        arrived = tl.atomic_add(lock_ptr + t_loc, 1, sem="acq_rel")
        tl.debug_barrier()
        if arrived == splits - 1:      # the last chunk in: every partial is visible
            # sum the slots (its own too) FIX_ROWS rows at a time: few registers, no acc kept
            for r0 in tl.static_range(0, BM, FIX_ROWS):
                rows = r0 + tl.arange(0, FIX_ROWS)
                offs_r = rows[:, None] * BN + tl.arange(0, BN)[None, :]
                tot = tl.zeros([FIX_ROWS, BN], tl.float32)
                tot_u = tl.zeros([FIX_ROWS, BN], tl.float32)
                for c in range(splits):
                    slot = part_ptr + (t_loc * splits + c).to(tl.int64) * slot_elems + offs_r
                    tot += tl.load(slot, cache_modifier=".cg")
                    if PAIR:
                        tot_u += tl.load(slot + BM * BN, cache_modifier=".cg")
                _epilogue(tot, tot_u, c_ptr, bias_ptr, pid_m * BM + rows, rn, M, N, s_cm,
                          HAS_BIAS, PAIR, ACC)
            tl.atomic_xchg(lock_ptr + t_loc, 0)     # leave the counter as it was found


# sizes that change with the token count are not specialized on (one compile per tile shape)
@triton.jit(do_not_specialize=["M", "num_pid_m", "num_pid_n", "num_units", "tail_tiles",
                               "splits", "chunk_iters"])
def _persistent_kernel(a_ptr, w_ptr, c_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, K, s_am, s_wn,
                       s_cm, k_per_split, pair_offset, num_pid_m, num_pid_n, num_units,
                       tail_tiles, splits, chunk_iters,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                       PAIR: tl.constexpr, DOT_F32: tl.constexpr, EVEN_K: tl.constexpr,
                       TAIL: tl.constexpr, FIX_ROWS: tl.constexpr, ACC: tl.constexpr,
                       PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # with TAIL the units are the whole tiles [0, num_units) (whole waves); the tail follows
    for unit in range(pid, num_units, nprog):
        tile = unit // SPLIT_K
        ks = unit % SPLIT_K
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        k_lo = ks * k_per_split
        acc, acc_u = _mma(a_ptr, w_ptr, M, N, s_am, s_wn, pair_offset, rm, rn, k_lo,
                          tl.minimum(k_lo + k_per_split, K), BM, BN, BK, PAIR, DOT_F32, EVEN_K,
                          PRECISION)
        if SPLIT_K == 1:
            _epilogue(acc, acc_u, c_ptr, bias_ptr, rm, rn, M, N, s_cm, HAS_BIAS, PAIR, ACC)
        else:
            # workspace: [SPLIT_K, M, N] (PAIR: [SPLIT_K, 2, M, N])
            cmask = (rm < M)[:, None] & (rn < N)[None, :]
            slab = ks * (2 if PAIR else 1)
            base = ws_ptr + slab.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :]
            tl.store(base, acc, mask=cmask)
            if PAIR:
                tl.store(base + M * N, acc_u, mask=cmask)
    if TAIL:
        _split_tail(a_ptr, w_ptr, c_ptr, bias_ptr, ws_ptr, lock_ptr, M, N, K, s_am, s_wn, s_cm,
                    pair_offset, num_pid_m, num_pid_n, num_units, tail_tiles, splits, chunk_iters,
                    BM, BN, BK, GROUP_M, HAS_BIAS, PAIR, DOT_F32, EVEN_K, FIX_ROWS, ACC,
                    PRECISION)


@triton.jit
def _reduce_kernel(ws_ptr, c_ptr, bias_ptr, M, N, s_cm, SPLIT_K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, PAIR: tl.constexpr, BLOCK: tl.constexpr,
                   ACC: tl.constexpr):
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
    c_ptrs = c_ptr + (offs // N) * s_cm + col
    if ACC:
        acc += tl.load(c_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


def plan_for(m: int, n: int, k: int, cfg: MatmulConfig, sm_count: int) -> TailPlan:
    """The split-tail plan `matmul` launches for this shape (cfg.tail_split > 1)."""
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    return tail_plan(tiles, sm_count * cfg.programs_per_sm, triton.cdiv(k, cfg.block_k),
                     cfg.tail_split)


def matmul(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, bias, cfg: MatmulConfig,
           sm_count: int, pair: bool, locks: torch.Tensor | None = None,
           accumulate: bool = False) -> torch.Tensor:
    """Launch on a grid of min(sm_count, units) programs; shapes were checked by the caller.
    accumulate: out += the product (rounded once) instead of out = the product.

    A split tail takes a float32 partial workspace (torch.empty) and an int32 counter per tail
    tile, both from the caching allocator, so the launch captures into a CUDA graph. The
    counters are `locks` when given (int32, zero, at least `plan_for(...).tail_tiles` of them,
    used by one launch at a time: the kernel leaves them at zero), else a torch.zeros before
    the launch.
    """
    m, k = x.shape
    n = out.shape[1]
    num_pid_m, num_pid_n = triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    units = num_pid_m * num_pid_n * cfg.split_k
    grid, tail_tiles, splits, chunk_iters = min(units, sm_count * cfg.programs_per_sm), 0, 1, 1
    ws, counters = out, out
    if cfg.tail_split > 1:
        plan = plan_for(m, n, k, cfg, sm_count)
        units, grid, tail_tiles, splits = plan.dp_tiles, plan.programs, plan.tail_tiles, \
            plan.splits
        chunk_iters = plan.chunk_iters
        if tail_tiles:
            ws = torch.empty((plan.tail_units * (2 if pair else 1) * cfg.block_m * cfg.block_n,),
                             device=x.device, dtype=torch.float32)
            if locks is not None and (locks.dtype != torch.int32 or locks.numel() < tail_tiles):
                raise ValueError(f"matmul: locks must be int32 with at least {tail_tiles} "
                                 f"entries, got {locks.dtype} x {locks.numel()}")
            counters = locks if locks is not None else torch.zeros(
                (tail_tiles,), device=x.device, dtype=torch.int32)
    elif cfg.split_k > 1:
        ws = torch.empty((cfg.split_k * (2 if pair else 1) * m * n,), device=x.device,
                         dtype=torch.float32)
    has_bias = bias is not None
    # a co-resident budget caps the registers (ptxas maxrregcount): the CUDA launch option only
    limits = {"maxnreg": cfg.maxnreg} if cfg.maxnreg is not None and x.is_cuda else {}
    _persistent_kernel[(grid,)](
        x, weight, out, bias if has_bias else out, ws, counters, m, n, k, x.stride(0),
        weight.stride(0), out.stride(0), k_per_split, n, num_pid_m, num_pid_n, units,
        tail_tiles, splits, chunk_iters,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, SPLIT_K=cfg.split_k, GROUP_M=8,
        HAS_BIAS=has_bias, PAIR=pair, DOT_F32=not x.is_cuda,
        EVEN_K=k_per_split * cfg.split_k == k, TAIL=tail_tiles > 0,
        FIX_ROWS=min(cfg.block_m, 32), ACC=accumulate,
        # float32 stays IEEE on the GPU (tl.dot's default is tf32); bf16/fp16 dots ignore it
        PRECISION="ieee" if x.dtype == torch.float32 or not x.is_cuda else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **limits)
    if cfg.split_k > 1:
        block = 1024
        _reduce_kernel[(triton.cdiv(m * n, block),)](
            ws, out, bias if has_bias else out, m, n, out.stride(0), SPLIT_K=cfg.split_k,
            HAS_BIAS=has_bias, PAIR=pair, BLOCK=block, ACC=accumulate, num_warps=4)
    return out
