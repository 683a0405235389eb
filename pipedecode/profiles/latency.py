"""Latency of one op on a partition of n SMs, read from a DeviceProfile.

Owns the interpolation rule, the co-run and co-resident interference read from measured
samples, and the analytic model: the one model of how long a GEMM takes on a partition
(`wave_compute_s`, the rates read from the profile), which the planner prices stages with and
the persistent matmul's tile chooser (`runtime/kernels/tiling.py`) compares its candidates
with. Knows nothing of models, stages or schedules: callers pass GEMM shapes and
attention sizes; FLOPs and bytes are counted in `pipedecode.counts`.

Interpolation rule (the same for GEMMs and attention):
  1. take the table points of the same shape: (n, k) for a GEMM; (num_heads, num_kv_heads,
     head_dim) for attention. None: the analytic model answers.
  2. at each measured SM count, interpolate piecewise-linearly in the work coordinate
     (tokens for a GEMM, KV tokens = batch * context_len for attention);
  3. then interpolate piecewise-linearly between the measured SM counts.
  Outside the measured range of a coordinate the nearest point answers, scaled by the analytic
  model's ratio between the asked value and that point (so trends extrapolate, levels come from
  the measurement).

Analytic model: an op takes max(flops / compute rate, bytes / bandwidth) + launch overhead,
where a partition of s SMs computes at peak * s / sm_count and streams at
`bandwidth_bytes_per_s(profile, s)`. A GEMM's compute runs in waves: its output tiles are dealt
to the s SMs, ceil(tiles / s) waves of one tile each at the per-SM rate, so a GEMM of few tiles
leaves SMs idle (wave quantization).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable

from pipedecode import counts
from pipedecode.profiles.schema import DeviceProfile

GEMM_TILE = 128        # output tile edge (tokens and n) used for wave quantization
_SATURATION_POWER = 4  # smooth-min exponent of the bandwidth saturation model


def bandwidth_bytes_per_s(profile: DeviceProfile, sm_count: float) -> float:
    """Streaming bandwidth of a partition of `sm_count` SMs.

    From `bandwidth_by_sms` (piecewise-linear, proportional below the first point, flat above
    the last) when measured; else a smooth minimum of `per_sm_bytes_per_s * sm_count` and the
    whole-chip bandwidth (fits the H100 probe within 5%: 2.22 vs 2.11 TB/s at 32 SMs).
    """
    if sm_count <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    table = profile.bandwidth_by_sms
    if table:
        xs, ys = [s for s, _ in table], [bw for _, bw in table]
        if sm_count <= xs[0]:
            return ys[0] * sm_count / xs[0]
        if sm_count >= xs[-1]:
            return ys[-1]
        return _linear(xs, ys, sm_count)
    p, linear = _SATURATION_POWER, profile.per_sm_bytes_per_s * sm_count
    return (linear ** -p + profile.hbm_bytes_per_s ** -p) ** (-1 / p)


def piecewise(samples: list[tuple[float, float]], x: float) -> float:
    """A sampled quantity at `x`: samples at one coordinate averaged, piecewise-linear between
    coordinates, the nearest coordinate's value outside their range (co-run samples by memory
    SMs, co-resident samples by micro-batch tokens)."""
    by_x: dict[float, list[float]] = {}
    for at, value in samples:
        by_x.setdefault(at, []).append(value)
    xs = sorted(by_x)
    ys = [sum(by_x[v]) / len(by_x[v]) for v in xs]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    return _linear(xs, ys, x)


_by_memory_sms = piecewise


def coresident_budgets(profile: DeviceProfile) -> tuple[int, ...]:
    """The attention shared-memory budgets the profile's co-resident samples were measured at
    (empty: co-resident mode cannot be priced on this profile)."""
    return tuple(sorted({s.attention_smem_bytes for s in profile.coresident_samples}))


def coresident_penalty(profile: DeviceProfile, smem_bytes: int, tokens: float) -> float:
    """The measured interference of a co-resident phase (`CoresidentSample.overlap_penalty`):
    the extra time per unit of the shorter side, piecewise-linear in the micro-batch's tokens
    among the samples of this budget. KeyError where the profile has none of this budget."""
    samples = [(s.tokens, s.overlap_penalty) for s in profile.coresident_samples
               if s.attention_smem_bytes == smem_bytes]
    if not samples:
        raise KeyError(f"{profile.name} has no co-resident samples at {smem_bytes} bytes")
    return piecewise(samples, tokens)


def corun_weights(profile: DeviceProfile, memory_sms: float) -> tuple[float, float]:
    """(w_longer, w_shorter): two sides at once take w_longer * max(alone) + w_shorter * min(alone).

    With measured samples: (1, penalty), the penalty (`CorunSample.overlap_penalty`) being
    piecewise-linear in the memory partition's SMs and the nearest sample's outside their range.
    Without: (`corun_slowdown`, 0). w_shorter <= w_longer always, so the time is also
    max(w_longer * a + w_shorter * c, w_longer * c + w_shorter * a): linear pieces for the ILP.
    """
    if not profile.corun_samples:
        return profile.corun_slowdown, 0.0
    return 1.0, _by_memory_sms([(s.memory_sms, s.overlap_penalty)
                                for s in profile.corun_samples], memory_sms)


def corun_us(profile: DeviceProfile, memory_sms: float, memory_us: float,
             compute_us: float) -> float:
    """Both sides at once (`corun_weights`): a short side beside a long one costs little, two
    equal sides the most; measured co-run samples decide how much at each split."""
    w_longer, w_shorter = corun_weights(profile, memory_sms)
    return w_longer * max(memory_us, compute_us) + w_shorter * min(memory_us, compute_us)


def corun_slowdown(profile: DeviceProfile, memory_sms: float) -> float:
    """Slowdown of attention on `memory_sms` SMs beside GEMMs on the rest, over max(alone).

    From `corun_samples` when measured (piecewise-linear in the memory partition's SM count,
    the nearest sample outside their range, never below 1); else `corun_slowdown`.
    """
    if not profile.corun_samples:
        return profile.corun_slowdown
    return max(1.0, _by_memory_sms([(s.memory_sms, s.slowdown) for s in profile.corun_samples],
                                   memory_sms))


def flops_per_sm(profile: DeviceProfile) -> float:
    """The dense bf16 matrix rate of one SM."""
    return profile.peak_flops_per_s / profile.sm_count


def wave_compute_s(profile: DeviceProfile, units: float, unit_flops: float, sm_count: float,
                   efficiency: float = 1.0) -> float:
    """Seconds to compute `units` work units of `unit_flops` each on `sm_count` SMs: ceil(units
    / sm_count) waves, each one unit per SM at the per-SM rate times `efficiency` (how close a
    tile shape comes to the tensor cores' peak)."""
    return math.ceil(units / sm_count) * unit_flops / (flops_per_sm(profile) * efficiency)


def analytic_gemm_us(profile: DeviceProfile, tokens: float, n: int, k: int,
                     sm_count: float, dtype_bytes: int = 2) -> float:
    """Roofline latency of y[tokens, n] = x @ w^T in waves of GEMM_TILE x GEMM_TILE output
    tiles (each tile's share of the FLOPs)."""
    work = counts.gemm(tokens, n, k, dtype_bytes)
    tiles = math.ceil(max(tokens, 1) / GEMM_TILE) * math.ceil(n / GEMM_TILE)
    busy_sms = min(sm_count, tiles)
    seconds = max(wave_compute_s(profile, tiles, work.flops / tiles, sm_count),
                  work.bytes_moved / bandwidth_bytes_per_s(profile, busy_sms))
    return seconds * 1e6 + profile.launch_overhead_us


def analytic_attention_us(profile: DeviceProfile, batch: float, context_len: float,
                          num_heads: int, num_kv_heads: int, head_dim: int,
                          sm_count: float, dtype_bytes: int = 2) -> float:
    """Decode attention: every sequence reads its K and V once; one query token each."""
    kv_tokens = batch * context_len
    work = counts.attention(batch, kv_tokens, kv_tokens, num_heads, num_kv_heads, head_dim,
                            dtype_bytes)
    rate = flops_per_sm(profile) * sm_count
    seconds = max(work.flops / rate, work.bytes_moved / bandwidth_bytes_per_s(profile, sm_count))
    return seconds * 1e6 + profile.launch_overhead_us


def gemm_latency_us(profile: DeviceProfile, tokens: float, n: int, k: int,
                    sm_count: float) -> float:
    """Latency of one bf16 GEMM on `sm_count` SMs: table when measured, else analytic."""
    rows = _index(profile)[0].get((n, k))
    analytic = lambda t, s: analytic_gemm_us(profile, t, n, k, s)  # noqa: E731
    if rows is None:
        return analytic(tokens, sm_count)
    latency_us = _interp_2d(rows, tokens, sm_count, analytic)
    if tokens > max(xs[-1] for xs, _ in rows.values()):
        # extrapolated beyond the largest measured size: never faster than the peak allows
        # (a table of moderately efficient shapes scaled by the analytic ratio can pass it)
        peak_us = counts.gemm(tokens, n, k, 2).flops / (flops_per_sm(profile) * sm_count) * 1e6
        latency_us = max(latency_us, peak_us)
    return latency_us


def attention_latency_us(profile: DeviceProfile, batch: float, context_len: float,
                         num_heads: int, num_kv_heads: int, head_dim: int,
                         sm_count: float) -> float:
    """Latency of decode attention over `batch` sequences of mean length `context_len`."""
    key = (num_heads, num_kv_heads, head_dim)
    rows = _index(profile)[1].get(key)

    def analytic(kv_tokens: float, s: float) -> float:
        return analytic_attention_us(profile, batch, kv_tokens / max(batch, 1), *key, s)

    if rows is None:
        return analytic(batch * context_len, sm_count)
    return _interp_2d(rows, batch * context_len, sm_count, analytic)


# id(profile) -> (profile, (gemm rows by (n, k), attention rows by head shape)); a memo only.
_INDEXES: dict[int, tuple[DeviceProfile, tuple[dict, dict]]] = {}


def _index(profile: DeviceProfile) -> tuple[dict, dict]:
    """The profile's tables grouped by shape, built once per profile object."""
    entry = _INDEXES.get(id(profile))
    if entry is not None and entry[0] is profile:
        return entry[1]
    gemm: dict = {}
    for p in profile.gemm_latency:
        gemm.setdefault((p.n, p.k), []).append((p.sm_count, p.tokens, p.latency_us))
    attention: dict = {}
    for p in profile.attention_latency:
        attention.setdefault((p.num_heads, p.num_kv_heads, p.head_dim), []).append(
            (p.sm_count, p.batch * p.context_len, p.latency_us))
    index = ({k: _rows(v) for k, v in gemm.items()}, {k: _rows(v) for k, v in attention.items()})
    if len(_INDEXES) > 64:
        _INDEXES.clear()
    _INDEXES[id(profile)] = (profile, index)
    return index


def _rows(triples: list[tuple[int, float, float]]) -> dict[int, tuple[list, list]]:
    """{sm_count: (sorted work values, latencies)}; duplicate work values are averaged."""
    grouped: dict[int, dict[float, list[float]]] = {}
    for sms, work, latency in triples:
        grouped.setdefault(sms, {}).setdefault(float(work), []).append(latency)
    return {s: (sorted(d), [sum(d[w]) / len(d[w]) for w in sorted(d)])
            for s, d in sorted(grouped.items())}


def _interp_2d(rows: dict[int, tuple[list, list]], work: float, sm_count: float,
               analytic: Callable[[float, float], float]) -> float:
    def at_sms(s: int) -> float:
        xs, ys = rows[s]
        return _interp_1d(xs, ys, work, lambda w: analytic(w, s))

    sms = list(rows)
    at = bisect_left(sms, sm_count)
    near = sms[max(at - 1, 0):at + 1]   # all _interp_1d reads: the counts around, or the end one
    return _interp_1d(near, [at_sms(s) for s in near], sm_count, lambda s: analytic(work, s))


def _interp_1d(xs: list, ys: list, x: float, analytic: Callable[[float], float]) -> float:
    if x < xs[0] or x > xs[-1]:
        near = 0 if x < xs[0] else len(xs) - 1
        return ys[near] * analytic(x) / analytic(xs[near])
    return _linear(xs, ys, x)


def _linear(xs: list, ys: list, x: float) -> float:
    i = bisect_left(xs, x)
    if xs[i] == x:
        return ys[i]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
