"""Device profiles: what the planner and the classification pass know about a GPU.

Owns the frozen `DeviceProfile` (whole-chip rates, SM partition rules, the streaming
bandwidth a partition of n SMs reaches, latency tables, the co-run slowdown, co-resident pairs)
and its versioned JSON form (version 1, without co-resident samples, still loads). Knows
nothing of models or schedules; `analytic.py` builds profiles for devices not yet measured,
`measure.py` builds measured ones from a timer (the GPU's is `runtime/profile_gpu.py`),
`latency.py` reads the tables (the interpolation rule lives there).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from pipedecode.errors import ProfileError

PROFILE_VERSION = 2
READS_VERSIONS = (1, 2)      # version 1: no coresident_samples


@dataclass(frozen=True)
class GemmPoint:
    """One measured GEMM: y[tokens, n] = x[tokens, k] @ w[n, k]^T on `sm_count` SMs (bf16)."""

    tokens: int
    n: int
    k: int
    sm_count: int
    latency_us: float


@dataclass(frozen=True)
class AttentionPoint:
    """One measured decode attention: `batch` sequences of `context_len` tokens, one query each."""

    batch: int
    context_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sm_count: int
    latency_us: float


@dataclass(frozen=True)
class CorunSample:
    """Attention on `memory_sms` beside GEMMs on `compute_sms`: alone and together."""

    memory_sms: int
    compute_sms: int
    memory_alone_us: float
    compute_alone_us: float
    together_us: float

    @property
    def slowdown(self) -> float:
        """together / max(alone): what `DeviceProfile.corun_slowdown` summarises."""
        return self.together_us / max(self.memory_alone_us, self.compute_alone_us)

    @property
    def overlap_penalty(self) -> float:
        """(together - max(alone)) / min(alone): the extra time per unit of overlapped work.

        Unlike `slowdown`, it does not depend on how balanced the two sides were when measured:
        a short side beside a long one costs little, two equal sides cost the most."""
        return _penalty(self.together_us, self.memory_alone_us, self.compute_alone_us)


def _penalty(together_us: float, a_us: float, b_us: float) -> float:
    """(together - max) / min of two sides' alone times, clamped to [0, 1]: the extra time per
    unit of overlapped work (at worst the two sides take as long as one after the other)."""
    longer, shorter = max(a_us, b_us), min(a_us, b_us)
    if shorter <= 0:
        return 0.0
    return min(1.0, max(0.0, (together_us - longer) / shorter))


@dataclass(frozen=True)
class CoresidentSample:
    """One phase of co-resident mode, per decoder layer of `model` (a preset name): the
    attention of `tokens` requests of `context_len` keys (the TMA kernel within
    `attention_smem_bytes`, one program per SM) beside post_attn + pre_attn of another
    `tokens`-row micro-batch (the persistent matmul within what the attention leaves), both on
    every SM on two plain streams: each alone and together, and the same ops as sequential mode
    runs them (the whole GPU, its default kernels)."""

    model: str
    tokens: int
    context_len: int
    attention_smem_bytes: int
    attention_alone_us: float
    compute_alone_us: float
    together_us: float
    attention_sequential_us: float
    compute_sequential_us: float

    def __post_init__(self) -> None:
        if not (isinstance(self.model, str) and self.model):
            raise ValueError(f"CoresidentSample.model must name a model, got {self.model!r}")
        for name in ("tokens", "context_len", "attention_smem_bytes"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"CoresidentSample.{name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}")
        for name in ("attention_alone_us", "compute_alone_us", "together_us",
                     "attention_sequential_us", "compute_sequential_us"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"CoresidentSample.{name} must be a positive number of "
                                 f"microseconds, got {value!r}")

    @property
    def overlap_penalty(self) -> float:
        """(together - max(alone)) / min(alone), clamped to [0, 1], as `CorunSample`'s."""
        return _penalty(self.together_us, self.attention_alone_us, self.compute_alone_us)

    @property
    def speedup(self) -> float:
        """The two sides as sequential mode runs them, one after the other, over together."""
        return (self.attention_sequential_us + self.compute_sequential_us) / self.together_us


_TABLES = {"gemm_latency": GemmPoint, "attention_latency": AttentionPoint,
           "corun_samples": CorunSample, "coresident_samples": CoresidentSample}


@dataclass(frozen=True)
class DeviceProfile:
    """One GPU as the cost model sees it. Rates are dense bf16 and HBM, achievable not datasheet."""

    name: str
    sm_count: int
    sm_granularity: int          # partitions come in multiples of this many SMs
    min_partition_sms: int       # smallest partition the driver grants
    peak_flops_per_s: float      # dense bf16 matrix rate on all SMs
    hbm_bytes_per_s: float       # read + write bandwidth on all SMs
    memory_bytes: int            # device memory
    source: str = "analytic"     # "analytic" or "measured"
    # (sm_count, bytes_per_s) a streaming kernel reaches on a partition of that many SMs,
    # sorted by sm_count; empty: `per_sm_bytes_per_s` saturating at `hbm_bytes_per_s`.
    bandwidth_by_sms: tuple[tuple[int, float], ...] = ()
    per_sm_bytes_per_s: float = 75e9
    gemm_latency: tuple[GemmPoint, ...] = ()
    attention_latency: tuple[AttentionPoint, ...] = ()
    # Concurrent attention + GEMMs on two partitions take max(alone) * slowdown, and never less
    # than both sides' bytes over the whole-chip bandwidth (the cost model charges both). The
    # slowdown is interpolated from corun_samples by memory_sms; corun_slowdown summarises them
    # and answers when there are none.
    corun_slowdown: float = 1.0
    corun_samples: tuple[CorunSample, ...] = ()
    # Co-resident phases (both sides on every SM, two plain streams): without them the planner
    # cannot price co-resident mode and says so.
    coresident_samples: tuple[CoresidentSample, ...] = ()
    launch_overhead_us: float = 4.0   # fixed cost per kernel in the analytic model
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("sm_count", "sm_granularity", "min_partition_sms", "memory_bytes",
                      "peak_flops_per_s", "hbm_bytes_per_s", "per_sm_bytes_per_s"):
            value = getattr(self, field)
            if not value > 0:
                raise ValueError(f"DeviceProfile.{field} must be positive, got {value}")
        if self.source not in ("analytic", "measured"):
            raise ValueError(f"DeviceProfile.source must be 'analytic' or 'measured', "
                             f"got {self.source!r}")
        if not (math.isfinite(self.corun_slowdown) and self.corun_slowdown >= 1.0):
            raise ValueError(f"DeviceProfile.corun_slowdown must be >= 1, "
                             f"got {self.corun_slowdown}")
        if self.launch_overhead_us < 0:
            raise ValueError(f"DeviceProfile.launch_overhead_us must be >= 0, "
                             f"got {self.launch_overhead_us}")
        sms = [s for s, _ in self.bandwidth_by_sms]
        if sms != sorted(set(sms)) or any(s <= 0 or bw <= 0 for s, bw in self.bandwidth_by_sms):
            raise ValueError("DeviceProfile.bandwidth_by_sms must be (sm_count, bytes_per_s) "
                             "pairs, positive and sorted by distinct sm_count")
        for table in ("gemm_latency", "attention_latency"):
            for point in getattr(self, table):
                if not point.latency_us > 0 or not point.sm_count > 0:
                    raise ValueError(f"DeviceProfile.{table}: latency_us and sm_count must be "
                                     f"positive, got {point}")

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which an op is compute-bound on the whole chip."""
        return self.peak_flops_per_s / self.hbm_bytes_per_s

    def partition_sizes(self) -> tuple[int, ...]:
        """SM counts a memory partition may have, leaving at least the minimum for the rest."""
        g, lo = self.sm_granularity, self.min_partition_sms
        first = -(-lo // g) * g
        return tuple(s for s in range(first, self.sm_count - lo + 1, g))

    # ---- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["bandwidth_by_sms"] = [list(p) for p in self.bandwidth_by_sms]
        return {"version": PROFILE_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> "DeviceProfile":
        """A validated profile; any problem raises ProfileError naming the field."""
        if not isinstance(data, dict):
            raise ProfileError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("version") not in READS_VERSIONS:
            raise ProfileError(f"{where}: field 'version' is {data.get('version')!r}, this "
                               f"pipedecode reads versions {READS_VERSIONS}; re-measure or "
                               f"convert it")
        if data["version"] == 1 and "coresident_samples" in data:
            raise ProfileError(f"{where}: field 'coresident_samples' is not in version 1; set "
                               f"version {PROFILE_VERSION}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields) - {"version"})
        if unknown:
            raise ProfileError(f"{where}: unknown field {unknown[0]!r}")
        missing = [f.name for f in fields.values() if f.name not in data
                   and f.default is dataclasses.MISSING]
        if missing:
            raise ProfileError(f"{where}: missing field {missing[0]!r}")
        kwargs = {k: v for k, v in data.items() if k != "version"}
        for name, point_cls in _TABLES.items():
            if name in kwargs:
                kwargs[name] = _points(kwargs[name], point_cls, f"{where}: field {name!r}")
        if "bandwidth_by_sms" in kwargs:
            kwargs["bandwidth_by_sms"] = _pairs(kwargs["bandwidth_by_sms"], where)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "profile") -> "DeviceProfile":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)


def _points(rows: Any, point_cls: type, where: str) -> tuple:
    if not isinstance(rows, (list, tuple)):
        raise ProfileError(f"{where} must be a list of objects")
    names = [f.name for f in dataclasses.fields(point_cls)]
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(names):
            raise ProfileError(f"{where}[{i}] must have exactly the keys {names}")
        try:
            out.append(point_cls(**row))
        except ValueError as exc:
            raise ProfileError(f"{where}[{i}]: {exc}") from None
    return tuple(out)


def _pairs(rows: Any, where: str) -> tuple[tuple[int, float], ...]:
    try:
        return tuple((int(s), float(bw)) for s, bw in rows)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: field 'bandwidth_by_sms' must be a list of "
                           f"[sm_count, bytes_per_s] pairs") from None
