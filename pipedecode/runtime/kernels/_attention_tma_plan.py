"""Launch plan of the Hopper TMA decode attention (`_attention_tma`): pure Python, no triton.

Owns the launch shape (`TmaAttentionConfig`), the geometry read off the wrapper's tensors and
checked (`cache_geometry`: ValueError naming the bad argument), the shared-memory footprint
(`smem_bytes`), the config for a budget (`choose_config`), the work decomposition
(`plan_launch`: split count, items, grid) and the index arithmetic the kernel does per item and
tile (`item_range`, `item_tiles`, `tile_box_positions`), written here once so the CPU tests can
check that every key is read exactly once. Knows nothing of GPUs, triton or partitions beyond
the SM count it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PANEL_COLS = 64                    # a ring slot holds [block_n, 64] elements: one 128-byte row each
CONSUMER_WARPS = 4                 # one warpgroup: the M side of every wgmma
SMEM_PER_SM_BYTES = 228 * 1024     # Hopper (H100, H200): shared memory per SM
SMEM_PER_CTA_MAX_BYTES = 227 * 1024
CTA_RESERVED_BYTES = 1024          # the driver's per-CTA reservation on sm_90
# Compiler scratch beside the ring, q and P (cross-warp reductions, the warp-specialization state):
# 132-260 bytes in the offline sm_90 compiles of every variant (triton 3.6); 1 KiB of margin.
SMEM_RESERVE_BYTES = 1024
# Split choice: cost of a program's items in keys. Estimates (not fitted): an item's fixed cost
# (its q load, item lookup, output store) and a split's (the partials' round trip and the
# combine launch); benchmarks/kernels/attention_tma.py measures the splits they pick.
ITEM_COST_KEYS = 32
SPLIT_COST_KEYS = 128
# Registers per thread at launch (ptxas .maxnreg) by (block_n, group_pad): the CTA holds
# maxnreg x 256 threads (the producer warp's warpgroup is padded to four warps), and the
# consumer warpgroup gets (maxnreg x 256 - 24 x 128) / 128 through setmaxnreg. The least
# without spills in the offline sm_90 compiles (triton 3.6): 40 / 48 / 72 at block_n 64 and
# 56 / 80 / 104 at 128 for group_pad 8 / 16 / 32; these add a step of margin where it is free.
# 48 x 256 = 12288 registers is what a persistent GEMM CTA of 8 warps at 204 registers (the
# Triton matmul's 128x256 tile) leaves of an SM's 65536.
MAXNREG = {(64, 8): 48, (64, 16): 56, (64, 32): 80, (128, 8): 64, (128, 16): 80,
           (128, 32): 104}
PRODUCER_REGS = 24


@dataclass(frozen=True)
class TmaAttentionConfig:
    """Launch shape. num_slots counts [block_n, 64] panels of K or V in the ring."""

    block_n: int = 128             # keys per tile: the M side of S^T = K q^T
    num_slots: int = 6
    box_rows: int = 64             # rows per TMA box, contiguous layout (paged: the block size)
    ctas_per_sm: int = 2           # resident programs per SM the grid is sized for
    persistent: bool = True        # False: one program per work item
    min_chunk: int = 256           # never split a request into chunks shorter than this
    maxnreg: int | None = None     # registers per thread at launch (default: MAXNREG)

    def __post_init__(self) -> None:
        if self.block_n not in (64, 128):
            raise ValueError(f"TmaAttentionConfig.block_n must be 64 or 128, got {self.block_n}")
        if self.num_slots < 3 or self.num_slots > 32:
            raise ValueError(f"TmaAttentionConfig.num_slots must be in 3..32, got "
                             f"{self.num_slots}")
        if self.box_rows < 8 or self.box_rows & (self.box_rows - 1) or self.box_rows > self.block_n:
            raise ValueError(f"TmaAttentionConfig.box_rows must be a power of two in 8.."
                             f"{self.block_n}, got {self.box_rows}")
        if self.ctas_per_sm < 1 or self.min_chunk < 1:
            raise ValueError("TmaAttentionConfig.ctas_per_sm and min_chunk must be positive")
        if self.maxnreg is not None and (self.maxnreg % 8 or not 40 <= self.maxnreg <= 256):
            raise ValueError(f"TmaAttentionConfig.maxnreg must be a multiple of 8 in 40..256, "
                             f"got {self.maxnreg}")


@dataclass(frozen=True)
class CacheGeometry:
    """What the launch plan needs of q and the caches. block_size 0: the contiguous layout."""

    batch: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int               # host-side bound on context_lens: sizes the splits
    block_size: int = 0
    element_size: int = 2

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def group_pad(self) -> int:    # the N side of both wgmmas: a multiple of 8
        return max(8, 1 << (self.group - 1).bit_length())

    @property
    def panels(self) -> int:
        return self.head_dim // PANEL_COLS


@dataclass(frozen=True)
class LaunchPlan:
    block_n: int
    box_rows: int
    num_slots: int
    num_splits: int
    chunk_len: int                 # keys per split, a multiple of block_n
    num_items: int                 # num_splits x batch x kv_heads
    num_ctas: int                  # programs launched
    smem_bytes: int                # planned dynamic shared memory per program
    maxnreg: int

    @property
    def registers_per_cta(self) -> int:   # what one program holds of the SM's register file
        return self.maxnreg * 32 * (CONSUMER_WARPS + 4)

    @property
    def single(self) -> bool:      # one split: the kernel writes the output, no combine
        return self.num_splits == 1


def cache_geometry(q, k_cache, v_cache, context_lens, out, block_tables, context_starts,
              max_context_len) -> CacheGeometry:
    """The launch geometry; ValueError (naming the argument) for inputs that do not fit."""
    name = "decode_attention_tma"
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"{name}: q must be [batch, heads, dim] and k_cache, v_cache one 4-D "
                         f"shape; got {tuple(q.shape)}, {tuple(k_cache.shape)}, "
                         f"{tuple(v_cache.shape)}")
    batch, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if k_cache.shape[3] != head_dim or num_heads % kv_heads:
        raise ValueError(f"{name}: k_cache {tuple(k_cache.shape)} does not fit q "
                         f"{tuple(q.shape)} (head_dim must match, heads a multiple of kv heads)")
    if block_tables is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"{name}: a contiguous k_cache must be [{batch}, kv_heads, max_ctx, "
                             f"dim], got {tuple(k_cache.shape)}")
        capacity, block_size = k_cache.shape[2], 0
    else:
        if block_tables.dim() != 2 or block_tables.shape[0] != batch or \
                block_tables.dtype != torch.int32:
            raise ValueError(f"{name}: block_tables must be int32 [{batch}, max_blocks], got "
                             f"{block_tables.dtype} {tuple(block_tables.shape)}")
        block_size = k_cache.shape[2]
        capacity = block_tables.shape[1] * block_size
    for arg, t in (("context_lens", context_lens), ("context_starts", context_starts)):
        if t is not None and (t.shape != (batch,) or t.dtype != torch.int32):
            raise ValueError(f"{name}: {arg} must be int32 [{batch}], got {t.dtype} "
                             f"{tuple(t.shape)}")
    if out is None or out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"{name}: out must be {q.dtype} {tuple(q.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"{name}: k_cache and v_cache must share strides and dtype")
    if any(t.stride(-1) != 1 for t in (q, k_cache, out)):
        raise ValueError(f"{name}: the last dimension of q, the caches and out must be contiguous")
    bound = capacity if max_context_len is None else min(int(max_context_len), capacity)
    return CacheGeometry(batch, num_heads, kv_heads, head_dim, max(1, bound), block_size,
                         k_cache.element_size())


def smem_bytes(block_n: int, num_slots: int, head_dim: int, group_pad: int,
               element_size: int = 2) -> int:
    """Shared memory of one program: the ring, q ([group_pad, head_dim]), P^T ([group_pad,
    block_n]), a ready and an empty mbarrier per slot, and the compiler's scratch."""
    ring = num_slots * block_n * PANEL_COLS * element_size
    q_and_p = group_pad * (head_dim + block_n) * element_size
    return ring + q_and_p + 16 * num_slots + SMEM_RESERVE_BYTES


def choose_config(geom: CacheGeometry, smem_budget_bytes: int | None = None) -> TmaAttentionConfig:
    """The deepest ring within the budget. No budget: two programs per SM, each with half the
    SM's shared memory; a budget (the co-resident mode): one program per SM within it. Below
    96 KiB the tiles shrink to 64 keys, so that more of the ring is in flight while the consumer
    holds a tile's panels."""
    if smem_budget_bytes is None:
        ctas, budget = 2, SMEM_PER_SM_BYTES // 2 - CTA_RESERVED_BYTES
    else:
        ctas, budget = 1, int(smem_budget_bytes)
    budget = min(budget, SMEM_PER_CTA_MAX_BYTES)
    block_n = 128 if budget >= 96 * 1024 else 64
    fixed = smem_bytes(block_n, 0, geom.head_dim, geom.group_pad, geom.element_size)
    slot = block_n * PANEL_COLS * geom.element_size + 16
    slots = min(32, (budget - fixed) // slot)
    least = geom.panels + 1      # the consumer holds a tile's K (or V) panels while one more lands
    if slots < max(3, least):
        need = fixed + max(3, least) * slot
        raise ValueError(f"smem_budget_bytes={budget} is too small for head_dim "
                         f"{geom.head_dim}: the ring needs at least {need} bytes")
    return TmaAttentionConfig(block_n=block_n, num_slots=slots, ctas_per_sm=ctas,
                              box_rows=min(64, block_n))


def _splits(num_bh: int, max_context: int, num_ctas: int, cfg: TmaAttentionConfig):
    """(splits, chunk_len) with the least modelled time of the busiest program: its items'
    keys plus their fixed costs, plus the combine where there is more than one split."""
    most = max(1, math.ceil(max_context / max(cfg.min_chunk, cfg.block_n)))
    best = None
    for want in range(1, most + 1):
        chunk = math.ceil(math.ceil(max_context / want) / cfg.block_n) * cfg.block_n
        splits = math.ceil(max_context / chunk)
        busiest = math.ceil(num_bh * splits / num_ctas)
        cost = busiest * (chunk + ITEM_COST_KEYS) + (SPLIT_COST_KEYS if splits > 1 else 0)
        if best is None or cost < best[0]:
            best = (cost, splits, chunk)
    return best[1], best[2]


def plan_launch(geom: CacheGeometry, cfg: TmaAttentionConfig, sm_count: int,
                num_ctas: int | None = None) -> LaunchPlan:
    """Split count, items and grid for a launch on sm_count SMs (num_ctas: a persistent grid
    of exactly that many programs, else cfg.ctas_per_sm per SM)."""
    if min(geom.batch, geom.num_kv_heads, geom.max_context, sm_count) <= 0:
        raise ValueError("plan_launch needs positive batch, kv heads, max_context and sm_count")
    if num_ctas is not None and num_ctas <= 0:
        raise ValueError(f"num_ctas must be positive, got {num_ctas}")
    resident = num_ctas if num_ctas is not None else cfg.ctas_per_sm * sm_count
    num_bh = geom.batch * geom.num_kv_heads
    splits, chunk = _splits(num_bh, geom.max_context, resident, cfg)
    items = splits * num_bh
    persistent = cfg.persistent or num_ctas is not None
    box = cfg.box_rows if geom.block_size == 0 else min(geom.block_size, cfg.block_n)
    return LaunchPlan(
        block_n=cfg.block_n, box_rows=box, num_slots=cfg.num_slots, num_splits=splits,
        chunk_len=chunk, num_items=items,
        num_ctas=min(resident, items) if persistent else items,
        smem_bytes=smem_bytes(cfg.block_n, cfg.num_slots, geom.head_dim, geom.group_pad,
                              geom.element_size),
        maxnreg=cfg.maxnreg or MAXNREG[(cfg.block_n, geom.group_pad)])


def item_range(split: int, chunk_len: int, length: int, start: int = 0) -> tuple[int, int]:
    """Keys [lo, hi) of one item (empty when lo >= hi): the kernel's `_item_range`."""
    return max(split * chunk_len, start), min(split * chunk_len + chunk_len, length)


def item_tiles(lo: int, hi: int, block_n: int) -> list[int]:
    """First keys of an item's tiles: from lo rounded down to a tile, while below hi."""
    return list(range(lo // block_n * block_n, hi, block_n)) if lo < hi else []


def tile_box_positions(n0: int, lo: int, hi: int, block_n: int, box_rows: int) -> list[int]:
    """The first key each of a tile's boxes loads: box j's own (n0 + j * box_rows) where it
    meets [lo, hi), else the nearest box that does (the kernel's producer)."""
    first = n0 + max(lo - n0, 0) // box_rows * box_rows
    last = n0 + (min(hi - n0, block_n) - 1) // box_rows * box_rows
    return [min(max(n0 + j * box_rows, first), last) for j in range(block_n // box_rows)]
