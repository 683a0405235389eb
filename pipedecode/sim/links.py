"""The links between GPUs the simulator prices transfers over, and the two transfer formulas.

Owns `Link` (bandwidth per direction and a per-message latency, with where each number comes
from), the shipped links `LINKS` ("pcie5", "nvlink4"), a point-to-point transfer and NCCL's
ring all-reduce. Knows nothing of models, stages or schedules: callers pass bytes.

Every number here is an ASSUMPTION, not a measurement of this project: the peak bandwidths are
the vendors' published figures, the achieved bandwidths and latencies typical of NCCL on such
links. `Link.calibrated` replaces them with numbers measured on a real run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """One GPU-to-GPU link. bytes_per_s: achieved bandwidth per direction (what transfers are
    priced at); peak_bytes_per_s: the published figure per direction; latency_us: the fixed
    cost of one message (NCCL send/recv or one ring step)."""

    name: str
    bytes_per_s: float
    peak_bytes_per_s: float
    latency_us: float
    source: str
    measured: bool = False

    def __post_init__(self) -> None:
        for field in ("bytes_per_s", "peak_bytes_per_s"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Link.{field} must be a positive number, got {value!r}")
        if not (math.isfinite(self.latency_us) and self.latency_us >= 0):
            raise ValueError(f"Link.latency_us must be a number >= 0, got {self.latency_us!r}")
        if self.bytes_per_s > self.peak_bytes_per_s:
            raise ValueError(f"Link {self.name}: achieved {self.bytes_per_s:.3g} B/s exceeds "
                             f"the peak {self.peak_bytes_per_s:.3g} B/s")

    def calibrated(self, bytes_per_s: float, latency_us: float) -> "Link":
        """The same link with measured numbers in place of the assumed ones."""
        return dataclasses.replace(self, bytes_per_s=bytes_per_s, latency_us=latency_us,
                                   measured=True, source=f"measured; was: {self.source}")

    def describe(self) -> str:
        kind = "measured" if self.measured else "assumed"
        return (f"{self.name}: {self.bytes_per_s / 1e9:.0f} GB/s per direction achieved "
                f"(peak {self.peak_bytes_per_s / 1e9:.0f}), {self.latency_us:g} us per "
                f"message, {kind} ({self.source})")


LINKS: dict[str, Link] = {
    "pcie5": Link(
        "pcie5", bytes_per_s=50e9, peak_bytes_per_s=63e9, latency_us=5.0,
        source="PCIe Gen5 x16: 32 GT/s x 16 lanes, 128b/130b encoding = 63 GB/s per direction "
               "(PCI-SIG PCIe 5.0; NVIDIA's H100/H200 datasheets: 128 GB/s both ways); ~50 GB/s "
               "achieved and ~5 us per NCCL message assumed"),
    "nvlink4": Link(
        "nvlink4", bytes_per_s=360e9, peak_bytes_per_s=450e9, latency_us=3.0,
        source="NVLink 4 on H100/H200 SXM: 18 links, 900 GB/s total = 450 GB/s per direction "
               "(NVIDIA H100/H200 datasheets); 80% of it achieved and ~3 us per NCCL message "
               "assumed; beyond the 8 GPUs of one HGX board it assumes an NVLink Switch "
               "System joining every GPU at the same speed"),
}


def get_link(name: str) -> Link:
    if name not in LINKS:
        raise ValueError(f"unknown link {name!r}; use one of {', '.join(LINKS)}")
    return LINKS[name]


def transfer_us(link: Link, num_bytes: float) -> float:
    """One point-to-point message of `num_bytes`: latency + bytes / bandwidth."""
    if num_bytes < 0:
        raise ValueError(f"a transfer moves >= 0 bytes, got {num_bytes}")
    return link.latency_us + num_bytes / link.bytes_per_s * 1e6


def ring_allreduce_us(link: Link, num_bytes: float, num_gpus: int) -> float:
    """NCCL's ring all-reduce of `num_bytes` on each of `num_gpus`: 2 (N - 1) steps (reduce-
    scatter, then all-gather), each moving bytes / N and paying one latency:
    2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency. Zero on one GPU."""
    if num_gpus < 1:
        raise ValueError(f"an all-reduce needs >= 1 GPU, got {num_gpus}")
    steps = 2 * (num_gpus - 1)
    return steps / num_gpus * num_bytes / link.bytes_per_s * 1e6 + steps * link.latency_us
