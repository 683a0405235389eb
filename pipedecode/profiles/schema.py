"""Device profiles: what the planner and the classification pass know about a GPU.

Owns the frozen `DeviceProfile` (whole-chip rates, SM partition rules, latency tables)
and its versioned JSON form. Knows nothing of models or schedules; `analytic.py` builds
profiles for devices not yet measured, `measure.py` (GPU only) builds measured ones.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_VERSION = 1


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

    def __post_init__(self) -> None:
        for field in ("sm_count", "sm_granularity", "min_partition_sms", "memory_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"DeviceProfile.{field} must be positive, got {getattr(self, field)}")
        for field in ("peak_flops_per_s", "hbm_bytes_per_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"DeviceProfile.{field} must be positive, got {getattr(self, field)}")
        if self.source not in ("analytic", "measured"):
            raise ValueError(f"DeviceProfile.source must be 'analytic' or 'measured', got {self.source!r}")

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which an op is compute-bound on the whole chip."""
        return self.peak_flops_per_s / self.hbm_bytes_per_s
