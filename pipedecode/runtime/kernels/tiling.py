"""Tile, split-K and stream-K tail choice for the persistent matmul, per (tokens, n, k, sm_count).

Pure Python (no triton, no GPU), so it is unit-tested on the CPU. The model is the GEMM model of
`profiles/latency.py` with the device's rates from its profile (`registry.local_profile`: the
GPU this runs on, h100 on a CPU): a work unit is one output tile over one K slice; a partition
of S SMs runs the units in ceil(units / S) waves (`latency.wave_compute_s`); a unit's time is
its tile's FLOPs over the per-SM matrix rate scaled by the tile's efficiency, and the whole GEMM
can be no faster than reading the weight once at the partition's bandwidth
(`latency.bandwidth_bytes_per_s`). What this module adds are the kernel's own launch costs:
split-K's float32 workspace round trip over the whole output and its reduce kernel, the split
tail's partial-tile hand-off, and a fixed cost per wave.

The stream-K tail (`TailPlan`) runs the whole waves of tiles as they are, then cuts each tile
of the last, partial wave into `tail_split` equal K chunks, so the partial wave becomes
ceil(tail tiles x splits / S) waves of 1/splits of a tile; the chunk's program stores a float32
partial and the last of a tile's chunks to finish adds the others and applies the epilogue.
Chunks are aligned (every tile is cut at the same K offsets) so the programs of one wave read
the same K range of shared rows and columns together while it is in L2: the classic stream-K
split, each program taking an equal run of K iterations across tile boundaries, starts every
program at a different K offset and measured a median 1.27x (up to 1.71x) slower than plain
waves on an H100 for these shapes (benchmarks/results/kernels_streamk_h100_classic.json),
from the HBM traffic of lost L2 reuse.

The split tail's cost (FIXUP_BYTES_PER_SM, TAIL_S) is fitted to the H100 sweep in
benchmarks/results/kernels_streamk_h100.json (96/104/132 SMs, 256-2048 tokens, four Llama shapes;
in-sample, no held-out check), and it is a candidate for
the largest tile only (the best tail in 38 of 45 sweep points without PAIR; with smaller tiles
the model, whose tile efficiencies are 20-50% optimistic, picked tails that lost). With the
shipped H100 profile's rates, the chooser takes the split tail at 4 of the 36 measured partition
points (down_proj, 2048 tokens): measured wins of 7-12% over the plain choice at the three where
that was measured; it misses measured tail wins of 3-9% (o_proj at 1024/2048 tokens, the fused
gate/up at 256).

The candidate with the least modelled time wins; ties go to fewer splits and larger tiles.
The device's rates only set the balance between the terms, not absolute times.

A budget (`TileBudget`: the shared memory and registers one CTA may hold, what a co-resident
persistent attention leaves on each SM) keeps only the tiles whose footprint fits: shared memory
`tile_smem_bytes` (the cp.async ring: stages x (A tile + B tile(s)), 147,456 bytes for 128x256x64
at 3 stages, as the PTX of the offline sm_90 compile showed), dropping stages down to two where
that makes a tile fit, and registers `tile_registers` (an estimate: the float32 accumulators per
thread plus 76, the rest of the 204 registers per thread the offline compile of the 128x256 tile
with 8 warps used), which the launch then caps at the budget (`MatmulConfig.maxnreg`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pipedecode.profiles.latency import bandwidth_bytes_per_s, wave_compute_s
from pipedecode.profiles.schema import DeviceProfile

FIXUP_BYTES_PER_SM = 10e9            # fitted: split-tail cost per float32 partial tile byte
TAIL_S = 3e-6                        # counter fill before the launch and the hand-off
WAVE_S = 1e-6                        # fixed cost of each wave of a persistent launch
REDUCE_S = 3e-6                      # split-K's reduce kernel launch


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
    tail_split: int = 1      # > 1: whole waves as they are, the partial wave's tiles in K chunks
    maxnreg: int | None = None   # registers per thread at launch (a co-resident budget's cap)

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages",
                     "programs_per_sm", "tail_split"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MatmulConfig.{name} must be positive, got {getattr(self, name)}")
        if self.tail_split > 1 and self.split_k != 1:
            raise ValueError(f"MatmulConfig.tail_split needs split_k=1, got {self.split_k}")
        if self.maxnreg is not None and not 24 <= self.maxnreg <= 255:
            raise ValueError(f"MatmulConfig.maxnreg must be in 24..255, got {self.maxnreg}")


@dataclass(frozen=True)
class TileBudget:
    """What one matmul CTA may hold: shared memory in bytes and registers (per thread x
    threads), e.g. what a co-resident attention CTA leaves of an SM."""

    smem_bytes: int
    registers: int

    def __post_init__(self) -> None:
        if self.smem_bytes <= 0 or self.registers <= 0:
            raise ValueError(f"TileBudget needs positive shared memory and registers, got "
                             f"{self.smem_bytes} bytes and {self.registers} registers")


@dataclass(frozen=True)
class TailPlan:
    """How one launch with a split tail shares out `tiles` tiles of `iters_per_tile` K blocks.

    Tiles [0, dp_tiles) are whole units, round-robin over `programs` programs (dp_tiles is a
    multiple of it); then unit u of the tail is chunk u // tail_tiles of tail tile
    u % tail_tiles (chunk-major: the programs of a wave work on the same K chunk), covering K
    blocks [chunk x chunk_iters, (chunk + 1) x chunk_iters). The kernel computes the same.
    """

    tiles: int
    dp_tiles: int
    programs: int
    splits: int
    iters_per_tile: int

    @property
    def tail_tiles(self) -> int:
        return self.tiles - self.dp_tiles

    @property
    def tail_units(self) -> int:
        return self.tail_tiles * self.splits

    @property
    def chunk_iters(self) -> int:
        return math.ceil(self.iters_per_tile / self.splits)

    @property
    def split_tiles(self) -> int:
        """Tail tiles cut into more than one chunk (those need the partial hand-off)."""
        return self.tail_tiles if self.splits > 1 else 0

    def unit(self, u: int) -> tuple[int, int]:
        """(tile, chunk) of tail unit u."""
        return self.dp_tiles + u % self.tail_tiles, u // self.tail_tiles


def tail_plan(tiles: int, programs: int, iters_per_tile: int, splits: int) -> TailPlan:
    """Whole waves first; the last partial wave (all tiles under one wave) cut into `splits`
    chunks. No tail where the tiles fill whole waves; the grid shrinks only where there are
    fewer units than programs."""
    if min(tiles, programs, iters_per_tile, splits) <= 0:
        raise ValueError(f"tail_plan needs positive sizes, got tiles={tiles} "
                         f"programs={programs} iters_per_tile={iters_per_tile} splits={splits}")
    if tiles % programs == 0 or splits == 1:
        return TailPlan(tiles, tiles, min(tiles, programs), 1, iters_per_tile)
    dp = tiles - tiles % programs
    grid = programs if dp else min(programs, tiles * splits)
    return TailPlan(tiles, dp, grid, splits, iters_per_tile)


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
MIN_STAGES = 2                       # the cp.async ring needs one tile landing, one in use
REGISTER_OVERHEAD = 76               # per thread beside the accumulators (see the docstring)
MAX_REGISTERS = 255                  # per thread on sm_90


def tile_smem_bytes(tile: tuple, stages: int, pair: bool = False, elem_bytes: int = 2) -> int:
    """Shared memory of one CTA: `stages` buffers of an A tile [bm, bk] and one B tile [bn, bk]
    (two in PAIR mode: the gate and up halves)."""
    bm, bn, bk = tile[:3]
    return stages * (bm * bk + (2 if pair else 1) * bn * bk) * elem_bytes


def tile_registers(tile: tuple, pair: bool = False) -> int:
    """Estimated registers per thread as granted (in steps of 8): float32 accumulators of the
    tile (two in PAIR mode) over its threads, plus REGISTER_OVERHEAD (addresses, loop state,
    the epilogue)."""
    bm, bn, _, warps = tile[:4]
    acc = bm * bn * (2 if pair else 1) // (32 * warps)
    return min(MAX_REGISTERS, -(-(acc + REGISTER_OVERHEAD) // 8) * 8)


def fit_tile(tile: tuple, pair: bool, budget: "TileBudget | None") -> tuple | None:
    """(tile with its stages, maxnreg) within `budget`, or None where it cannot fit: the
    tile's own stage count, else the most stages that fit (at least MIN_STAGES)."""
    bm, bn, bk, warps, stages, eff = tile
    if budget is None:
        return tile, None
    # registers are granted per warp in steps of 8 per thread: the cap is a multiple of 8
    maxnreg = min(MAX_REGISTERS, budget.registers // (32 * warps) // 8 * 8)
    if tile_registers(tile, pair) > maxnreg:
        return None
    while stages >= MIN_STAGES and tile_smem_bytes(tile, stages, pair) > budget.smem_bytes:
        stages -= 1
    if stages < MIN_STAGES:
        return None
    return (bm, bn, bk, warps, stages, eff), maxnreg


def modelled_time_s(m: int, n: int, k: int, sm_count: int, tile: tuple, split_k: int,
                    pair: bool = False, tail_split: int = 1,
                    profile: DeviceProfile | None = None) -> float:
    """Modelled seconds for one candidate on `profile` (None: `registry.local_profile()`; see
    the module docstring)."""
    profile = profile or _local_profile()
    bm, bn, bk, _, _, eff = tile
    width = 2 * bn if pair else bn
    bandwidth = bandwidth_bytes_per_s(profile, sm_count)
    weight_s = (2 if pair else 1) * n * k * 2 / bandwidth
    iter_flops = 2.0 * bm * width * bk          # one K block of one output tile
    if tail_split > 1:
        plan = _plan(m, n, k, sm_count, tile, tail_split)
        waves = plan.dp_tiles // plan.programs
        tail_waves = math.ceil(plan.tail_units / plan.programs)
        compute_s = wave_compute_s(profile, plan.dp_tiles, plan.iters_per_tile * iter_flops,
                                   plan.programs, eff) + \
            wave_compute_s(profile, plan.tail_units, plan.chunk_iters * iter_flops,
                           plan.programs, eff)
        return max(compute_s, weight_s) + _tail_fixup_s(plan, tile, pair) + \
            WAVE_S * (waves + tail_waves)
    k_slice = math.ceil(math.ceil(k / split_k) / bk) * bk
    units = math.ceil(m / bm) * math.ceil(n / bn) * split_k
    compute_s = wave_compute_s(profile, units, iter_flops * k_slice / bk, sm_count, eff)
    reduce_s = 0.0
    if split_k > 1:
        reduce_s = (2 if pair else 1) * m * n * 4 * (2 * split_k) / bandwidth + REDUCE_S
    return max(compute_s, weight_s) + reduce_s + WAVE_S * math.ceil(units / sm_count)


def _local_profile() -> DeviceProfile:
    """The profile of the GPU this runs on; for a GPU no profile describes, the h100 profile's
    rates (they only balance the model's terms), said once in a warning."""
    from pipedecode.errors import ProfileError
    from pipedecode.profiles.registry import local_profile

    try:
        return local_profile()
    except ProfileError as exc:
        _warn_once(f"the matmul tile chooser balances its terms with the h100 profile's rates: "
                   f"{exc}")
        return _h100()


@functools.lru_cache(maxsize=1)
def _h100() -> DeviceProfile:
    from pipedecode.profiles.registry import load_profile

    return load_profile("h100")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _plan(m: int, n: int, k: int, sm_count: int, tile: tuple, splits: int) -> TailPlan:
    bm, bn, bk = tile[:3]
    return tail_plan(math.ceil(m / bm) * math.ceil(n / bn), sm_count, math.ceil(k / bk), splits)


def _tail_fixup_s(plan: TailPlan, tile: tuple, pair: bool) -> float:
    """Each chunk stores its float32 partial tile; the last one in reads the others back."""
    if not plan.split_tiles:
        return 0.0
    part_bytes = tile[0] * tile[1] * 4 * (2 if pair else 1)
    return plan.splits * part_bytes / FIXUP_BYTES_PER_SM + TAIL_S


TAIL_SPLITS = (2, 3, 4, 6, 8)


def choose_config(m: int, n: int, k: int, sm_count: int, pair: bool = False,
                  tail: bool = True, profile: DeviceProfile | None = None,
                  budget: TileBudget | None = None) -> MatmulConfig:
    """The candidate with the least modelled time for y[m, n] = x[m, k] @ w[n, k]^T on sm_count SMs
    of `profile` (None: the GPU this runs on, `registry.local_profile()`).

    With `tail`, a split tail is a candidate for the largest tile where it leaves a partial
    wave on sm_count programs, in chunks of at least 4 K blocks. With `budget`, only tiles that
    fit it (`fit_tile`); ValueError where none does.
    """
    if min(m, n, k, sm_count) <= 0:
        raise ValueError(f"choose_config needs positive sizes, got m={m} n={n} k={k} "
                         f"sm_count={sm_count}")
    if profile is None:
        return _choose_local(m, n, k, sm_count, pair, tail, budget)
    key = (m, n, k, sm_count, pair, tail, budget, _rates(profile))
    if key not in _CHOICES:
        if len(_CHOICES) >= 8192:
            _CHOICES.clear()
        _CHOICES[key] = _choose(m, n, k, sm_count, pair, tail, profile, budget)
    return _CHOICES[key]


# (m, n, k, sm_count, pair, tail, the profile's rates) -> MatmulConfig: a memo keyed by the rates
# the model reads, not by the (large) profile object.
_CHOICES: dict[tuple, MatmulConfig] = {}


@functools.lru_cache(maxsize=4096)
def _choose_local(m: int, n: int, k: int, sm_count: int, pair: bool, tail: bool,
                  budget: TileBudget | None) -> MatmulConfig:
    """The choice on the GPU this runs on: what a launch asks, one cache lookup."""
    return choose_config(m, n, k, sm_count, pair, tail, _local_profile(), budget)


def _rates(profile: DeviceProfile) -> tuple:
    return (profile.peak_flops_per_s, profile.sm_count, profile.bandwidth_by_sms,
            profile.per_sm_bytes_per_s, profile.hbm_bytes_per_s)


def _choose(m: int, n: int, k: int, sm_count: int, pair: bool, tail: bool,
            profile: DeviceProfile, budget: TileBudget | None = None) -> MatmulConfig:
    best = None
    tiles = PAIR_TILES if pair else TILES
    for first, tile in enumerate(tiles):
        fitted = fit_tile(tile, pair, budget)
        if fitted is None:
            continue
        tile, maxnreg = fitted
        options = [(split, 1) for split in SPLITS
                   if split == 1 or math.ceil(k / split) >= 4 * tile[2]]
        if tail and first == 0 and _plan(m, n, k, sm_count, tile, 2).split_tiles:
            options += [(1, s) for s in TAIL_SPLITS if math.ceil(k / s) >= 4 * tile[2]]
        for split, tail_split in options:
            t = modelled_time_s(m, n, k, sm_count, tile, split, pair, tail_split, profile)
            rank = (round(t * 1e7), split * tail_split, -tile[0] * tile[1])
            if best is None or rank < best[0]:
                best = (rank, tile, split, tail_split, maxnreg)
    if best is None:
        raise ValueError(f"no matmul tile fits {budget}: the smallest needs "
                         f"{tile_smem_bytes(tiles[-1], MIN_STAGES, pair)} bytes of shared memory "
                         f"and {tile_registers(tiles[-1], pair) * 32 * tiles[-1][3]} registers")
    _, (bm, bn, bk, warps, stages, _), split, tail_split, maxnreg = best
    return MatmulConfig(block_m=bm, block_n=bn, block_k=bk, split_k=split, num_warps=warps,
                        num_stages=stages, tail_split=tail_split, maxnreg=maxnreg)


def candidate_configs(pair: bool = False) -> list[MatmulConfig]:
    """Every tile x split-K and tile x tail split the chooser may consider (the benchmark
    sweeps them to check it)."""
    tiles = PAIR_TILES if pair else TILES
    return [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], split_k=s, num_warps=t[3],
                         num_stages=t[4]) for t in tiles for s in SPLITS] + \
        [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], num_warps=t[3], num_stages=t[4],
                      tail_split=s) for t in tiles for s in TAIL_SPLITS]
