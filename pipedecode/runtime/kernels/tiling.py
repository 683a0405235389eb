"""Tile, split-K and stream-K choice for the persistent matmul, per (tokens, n, k, sm_count).

Pure Python (no triton, no GPU), so it is unit-tested on the CPU. The model: a work unit is one
output tile over one K slice; a partition of S SMs runs the units in ceil(units / S) waves; a
unit's time is its tile's FLOPs over the per-SM matrix rate scaled by the tile's efficiency,
and the whole GEMM can be no faster than reading the weight once at the partition's bandwidth.
Split-K adds a float32 workspace round trip. Stream-K (`StreamKPlan`) runs whole waves of tiles,
then spreads the K iterations of the last one to two waves' worth of tiles evenly over the
programs: no partial wave, paid for by float32 partial tiles that the last contributor of each
split tile reads back. The candidate with the least modelled time wins; ties go to fewer splits,
no stream-K and larger tiles. Rates are those of an H100/H200 (per SM), which only set the
balance between the terms, not absolute times.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

FLOPS_PER_SM = 790e12 / 132          # dense bf16, per SM
BYTES_PER_SM = 75e9                  # streaming rate of one SM at low counts (HOPPER-FACTS)
HBM_BYTES = 3.0e12                   # whole-chip ceiling
FIXUP_BYTES_PER_SM = 100e9           # one SM storing or reading float32 partial tiles (L2)
STREAM_K_S = 2e-6                    # counter reset and the contributors' hand-off


@dataclass(frozen=True)
class MatmulConfig:
    """Launch shape of the persistent matmul."""

    block_m: int
    block_n: int
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 8
    num_stages: int = 3
    programs_per_sm: int = 1
    stream_k: bool = False       # whole waves of tiles, then the rest split evenly by K iteration

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages",
                     "programs_per_sm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MatmulConfig.{name} must be positive, got {getattr(self, name)}")
        if self.stream_k and self.split_k != 1:
            raise ValueError(f"MatmulConfig.stream_k needs split_k=1, got {self.split_k}")


@dataclass(frozen=True)
class StreamKPlan:
    """How one stream-K launch shares out `tiles` output tiles of `iters_per_tile` K blocks.

    Tiles [0, dp_tiles) go round-robin to the `programs` programs, dp_tiles / programs whole
    tiles each; the K iterations of tiles [dp_tiles, tiles) are laid end to end and program p
    takes iterations [start(p), start(p + 1)). The kernel computes the same split.
    """

    tiles: int
    dp_tiles: int
    programs: int
    iters_per_tile: int

    @property
    def sk_tiles(self) -> int:
        return self.tiles - self.dp_tiles

    @property
    def sk_iters(self) -> int:
        return self.sk_tiles * self.iters_per_tile

    def start(self, program: int) -> int:
        """First stream-K iteration of `program` (start(programs) is the end)."""
        return program * self.sk_iters // self.programs

    def owner(self, it: int) -> int:
        """The program whose share holds stream-K iteration `it`."""
        return ((it + 1) * self.programs + self.sk_iters - 1) // self.sk_iters - 1

    def contributors(self, sk_tile: int) -> int:
        """Programs that compute part of stream-K tile `sk_tile` (counted from dp_tiles)."""
        lo = sk_tile * self.iters_per_tile
        return self.owner(lo + self.iters_per_tile - 1) - self.owner(lo) + 1

    @property
    def split_tiles(self) -> int:
        """Stream-K tiles computed by more than one program (those need the partial hand-off)."""
        return sum(self.contributors(t) > 1 for t in range(self.sk_tiles))


def stream_k_plan(tiles: int, programs: int, iters_per_tile: int) -> StreamKPlan:
    """Whole waves first, the last one to two waves' worth of tiles by stream-K.

    No stream-K when the tiles fill whole waves; all tiles by stream-K under two waves. The
    grid shrinks below `programs` only when there are fewer stream-K iterations than programs,
    so that every program has at least one.
    """
    if min(tiles, programs, iters_per_tile) <= 0:
        raise ValueError(f"stream_k_plan needs positive sizes, got tiles={tiles} "
                         f"programs={programs} iters_per_tile={iters_per_tile}")
    if tiles % programs == 0:
        return StreamKPlan(tiles, tiles, programs, iters_per_tile)
    dp = 0 if tiles < 2 * programs else (tiles // programs - 1) * programs
    grid = programs if dp else min(programs, tiles * iters_per_tile)
    return StreamKPlan(tiles, dp, grid, iters_per_tile)


# (block_m, block_n, block_k, warps, stages, relative efficiency of the tile on tensor cores)
TILES = (
    (128, 256, 64, 8, 3, 1.00),
    (128, 128, 64, 8, 4, 0.90),
    (64, 256, 64, 8, 3, 0.85),
    (64, 128, 64, 4, 4, 0.75),
    (128, 64, 64, 4, 4, 0.72),
    (64, 64, 64, 4, 4, 0.55),
)
PAIR_TILES = (   # two accumulators per program: half the N width for the same registers
    (128, 128, 64, 8, 3, 1.00),
    (128, 64, 64, 8, 4, 0.85),
    (64, 128, 64, 8, 3, 0.80),
    (64, 64, 64, 4, 4, 0.65),
)
SPLITS = (1, 2, 3, 4, 6, 8)


def modelled_time_s(m: int, n: int, k: int, sm_count: int, tile: tuple, split_k: int,
                    pair: bool = False, stream_k: bool = False) -> float:
    """Modelled seconds for one candidate (see the module docstring)."""
    bm, bn, bk, _, _, eff = tile
    width = 2 * bn if pair else bn
    bandwidth = min(HBM_BYTES, BYTES_PER_SM * sm_count)
    weight_s = (2 if pair else 1) * n * k * 2 / bandwidth
    if stream_k:
        return max(_stream_k_compute_s(m, n, k, sm_count, tile, pair), weight_s) + \
            _stream_k_fixup_s(m, n, k, sm_count, tile, pair)
    k_slice = math.ceil(math.ceil(k / split_k) / bk) * bk
    units = math.ceil(m / bm) * math.ceil(n / bn) * split_k
    waves = math.ceil(units / sm_count)
    unit_s = 2.0 * bm * width * k_slice / (FLOPS_PER_SM * eff)
    compute_s = waves * unit_s
    reduce_s = 0.0
    if split_k > 1:
        reduce_s = (2 if pair else 1) * m * n * 4 * (2 * split_k) / bandwidth + 3e-6
    return max(compute_s, weight_s) + reduce_s + 1e-6 * waves


def _plan(m: int, n: int, k: int, sm_count: int, tile: tuple) -> StreamKPlan:
    bm, bn, bk = tile[:3]
    return stream_k_plan(math.ceil(m / bm) * math.ceil(n / bn), sm_count, math.ceil(k / bk))


def _stream_k_compute_s(m, n, k, sm_count, tile, pair) -> float:
    """The busiest program: its whole tiles, its share of the stream-K iterations, per segment."""
    bm, bn, bk, _, _, eff = tile
    plan = _plan(m, n, k, sm_count, tile)
    iter_s = 2.0 * bm * (2 * bn if pair else bn) * bk / (FLOPS_PER_SM * eff)
    share = math.ceil(plan.sk_iters / plan.programs)
    iters = plan.dp_tiles // plan.programs * plan.iters_per_tile + share
    segments = plan.dp_tiles // plan.programs + math.ceil(share / plan.iters_per_tile) + 1
    return iters * iter_s + 1e-6 * segments


def _stream_k_fixup_s(m, n, k, sm_count, tile, pair) -> float:
    """A program stores up to two float32 partial tiles, and the last contributor to a split
    tile reads the others' back before the epilogue."""
    plan = _plan(m, n, k, sm_count, tile)
    if not plan.split_tiles:
        return 0.0
    most = max(plan.contributors(t) for t in range(plan.sk_tiles))
    part_bytes = tile[0] * tile[1] * 4 * (2 if pair else 1)
    return (2 + most - 1) * part_bytes / FIXUP_BYTES_PER_SM + STREAM_K_S


@functools.lru_cache(maxsize=4096)
def choose_config(m: int, n: int, k: int, sm_count: int, pair: bool = False,
                  stream_k: bool = True) -> MatmulConfig:
    """The candidate with the least modelled time for y[m, n] = x[m, k] @ w[n, k]^T on sm_count SMs.

    With `stream_k`, stream-K is a candidate for each tile whose plan on sm_count programs
    splits a tile (where the tiles fill whole waves it would be the plain kernel).
    """
    if min(m, n, k, sm_count) <= 0:
        raise ValueError(f"choose_config needs positive sizes, got m={m} n={n} k={k} "
                         f"sm_count={sm_count}")
    best = None
    for tile in (PAIR_TILES if pair else TILES):
        options = [(split, False) for split in SPLITS
                   if split == 1 or math.ceil(k / split) >= 4 * tile[2]]
        if stream_k and _plan(m, n, k, sm_count, tile).split_tiles:
            options.append((1, True))
        for split, sk in options:
            t = modelled_time_s(m, n, k, sm_count, tile, split, pair, stream_k=sk)
            key = (round(t * 1e7), split, sk, -tile[0] * tile[1])
            if best is None or key < best[0]:
                best = (key, tile, split, sk)
    _, (bm, bn, bk, warps, stages, _), split, sk = best
    return MatmulConfig(block_m=bm, block_n=bn, block_k=bk, split_k=split, num_warps=warps,
                        num_stages=stages, stream_k=sk)


def candidate_configs(pair: bool = False) -> list[MatmulConfig]:
    """Every tile x split, and each tile with stream-K, the chooser may consider (the benchmark
    sweeps them to check it)."""
    tiles = PAIR_TILES if pair else TILES
    return [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], split_k=s, num_warps=t[3],
                         num_stages=t[4]) for t in tiles for s in SPLITS] + \
        [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], num_warps=t[3], num_stages=t[4],
                      stream_k=True) for t in tiles]
