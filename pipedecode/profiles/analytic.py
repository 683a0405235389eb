"""Analytic device profiles for GPUs not yet measured: rates, partition rules, bandwidth model.

Owns the built-in numbers and says where each comes from. Knows nothing of models or plans.
Hopper rates and the per-SM-count bandwidth rows were measured on 2026-11-21 (shared
HOPPER-FACTS.md: a grid-stride Triton reduction over 1 GiB on green-context partitions, and
large bf16 GEMMs); A100 and RTX 4090 rates are datasheet figures, not measured. Latency tables
are empty here, so `latency.py` answers from the roofline model. The co-run slowdown stays 1.0:
analytic profiles charge only the shared HBM bandwidth (the cost model's floor); a measured
profile carries the real factor (one H100 probe with stock kernels saw 1.36 ms together against
0.80 / 0.52 ms alone, a factor of 1.7).
"""

from __future__ import annotations

from pipedecode.profiles.schema import DeviceProfile

_TB = 1e12
_GIB = 2 ** 30

# Streaming TB/s on a green-context partition of n SMs (HOPPER-FACTS section 2).
_H100_BW_TBS = {8: 0.61, 16: 1.18, 24: 1.70, 32: 2.11, 48: 2.65, 64: 2.87, 96: 3.03, 132: 3.08}
_H200_BW_TBS = {8: 0.63, 16: 1.24, 24: 1.80, 32: 2.31, 48: 3.21, 64: 3.80, 96: 4.18, 132: 4.39}


def _table(tbs: dict[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple((s, v * _TB) for s, v in sorted(tbs.items()))


def _builtin() -> dict[str, DeviceProfile]:
    # Hopper green contexts: partitions of at least 8 SMs, in multiples of 8 (HOPPER-FACTS 3).
    h100 = DeviceProfile(
        name="h100", sm_count=132, sm_granularity=8, min_partition_sms=8,
        peak_flops_per_s=798e12, hbm_bytes_per_s=3.08 * _TB, memory_bytes=int(79.2 * _GIB),
        bandwidth_by_sms=_table(_H100_BW_TBS), per_sm_bytes_per_s=75e9,
        description="NVIDIA H100 80GB HBM3 (SXM): measured bf16 GEMM rate and streaming "
                    "bandwidth per SM count; latencies analytic")
    h200 = DeviceProfile(
        name="h200", sm_count=132, sm_granularity=8, min_partition_sms=8,
        peak_flops_per_s=790e12, hbm_bytes_per_s=4.39 * _TB, memory_bytes=int(139.8 * _GIB),
        bandwidth_by_sms=_table(_H200_BW_TBS), per_sm_bytes_per_s=75e9,
        description="NVIDIA H200 141GB HBM3e: measured bf16 GEMM rate and streaming bandwidth "
                    "per SM count; latencies analytic")
    # Ampere and Ada green contexts: partitions of at least 4 SMs, in multiples of 2 (CUDA
    # driver API docs for cuDevSmResourceSplitByCount on compute capability 8.x).
    # Per-SM bandwidth assumed as on Hopper (unmeasured): the linear per-SM rate reaches the
    # chip's bandwidth at a third of its SMs (H100: 3.08 TB/s / 75 GB/s = 41 of 132 SMs).
    a100 = DeviceProfile(
        name="a100", sm_count=108, sm_granularity=2, min_partition_sms=4,
        peak_flops_per_s=312e12, hbm_bytes_per_s=2.039 * _TB, memory_bytes=int(79.2 * _GIB),
        per_sm_bytes_per_s=2.039 * _TB * 3 / 108,
        description="NVIDIA A100 80GB SXM: datasheet rates (312 TFLOP/s bf16 dense, 2.04 TB/s)")
    rtx4090 = DeviceProfile(
        name="rtx4090", sm_count=128, sm_granularity=2, min_partition_sms=4,
        peak_flops_per_s=165.2e12, hbm_bytes_per_s=1.008 * _TB, memory_bytes=int(23.6 * _GIB),
        per_sm_bytes_per_s=1.008 * _TB * 3 / 128,
        description="NVIDIA GeForce RTX 4090: datasheet rates (165 TFLOP/s bf16 with fp32 "
                    "accumulate, 1.01 TB/s GDDR6X); per-SM bandwidth assumed")
    return {p.name: p for p in (h100, h200, a100, rtx4090)}


BUILTIN = _builtin()

# Other spellings of the built-in names (device-tool kinds, marketing names).
ALIASES = {
    "nvidia-h100-x1": "h100", "nvidia-h100": "h100", "h100-sxm": "h100", "h100-80gb": "h100",
    "nvidia-h200": "h200", "nvidia-h200-x1": "h200", "h200-141gb": "h200",
    "nvidia-a100": "a100", "a100-80gb": "a100", "a100-sxm": "a100",
    "4090": "rtx4090", "rtx-4090": "rtx4090", "nvidia-rtx4090": "rtx4090",
}
