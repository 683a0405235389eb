"""Tile and split-K choice for the persistent matmul, per (tokens, n, k, sm_count).

Pure Python (no triton, no GPU), so it is unit-tested on the CPU. The model: a work unit is one
output tile over one K slice; a partition of S SMs runs the units in ceil(units / S) waves; a
unit's time is its tile's FLOPs over the per-SM matrix rate scaled by the tile's efficiency,
and the whole GEMM can be no faster than reading the weight once at the partition's bandwidth.
Split-K adds a float32 workspace round trip. The candidate with the least modelled time wins;
ties go to fewer splits and larger tiles. Rates are those of an H100/H200 (per SM), which only
set the balance between the terms, not absolute times.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

FLOPS_PER_SM = 790e12 / 132          # dense bf16, per SM
BYTES_PER_SM = 75e9                  # streaming rate of one SM at low counts (HOPPER-FACTS)
HBM_BYTES = 3.0e12                   # whole-chip ceiling


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

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages",
                     "programs_per_sm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MatmulConfig.{name} must be positive, got {getattr(self, name)}")


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
                    pair: bool = False) -> float:
    """Modelled seconds for one candidate (see the module docstring)."""
    bm, bn, bk, _, _, eff = tile
    k_slice = math.ceil(math.ceil(k / split_k) / bk) * bk
    width = 2 * bn if pair else bn
    units = math.ceil(m / bm) * math.ceil(n / bn) * split_k
    waves = math.ceil(units / sm_count)
    unit_s = 2.0 * bm * width * k_slice / (FLOPS_PER_SM * eff)
    bandwidth = min(HBM_BYTES, BYTES_PER_SM * sm_count)
    weight_s = (2 if pair else 1) * n * k * 2 / bandwidth
    compute_s = waves * unit_s
    reduce_s = 0.0
    if split_k > 1:
        reduce_s = (2 if pair else 1) * m * n * 4 * (2 * split_k) / bandwidth + 3e-6
    return max(compute_s, weight_s) + reduce_s + 1e-6 * waves


@functools.lru_cache(maxsize=4096)
def choose_config(m: int, n: int, k: int, sm_count: int, pair: bool = False) -> MatmulConfig:
    """The candidate with the least modelled time for y[m, n] = x[m, k] @ w[n, k]^T on sm_count SMs."""
    if min(m, n, k, sm_count) <= 0:
        raise ValueError(f"choose_config needs positive sizes, got m={m} n={n} k={k} "
                         f"sm_count={sm_count}")
    best = None
    for tile in (PAIR_TILES if pair else TILES):
        for split in SPLITS:
            if split > 1 and math.ceil(k / split) < 4 * tile[2]:
                continue
            t = modelled_time_s(m, n, k, sm_count, tile, split, pair)
            key = (round(t * 1e7), split, -tile[0] * tile[1])
            if best is None or key < best[0]:
                best = (key, tile, split)
    _, (bm, bn, bk, warps, stages, _), split = best
    return MatmulConfig(block_m=bm, block_n=bn, block_k=bk, split_k=split, num_warps=warps,
                        num_stages=stages)


def candidate_configs(pair: bool = False) -> list[MatmulConfig]:
    """Every tile x split the chooser considers (the benchmark sweeps them to check it)."""
    return [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], split_k=s, num_warps=t[3],
                         num_stages=t[4]) for t in (PAIR_TILES if pair else TILES) for s in SPLITS]
