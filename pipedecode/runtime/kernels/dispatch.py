"""Which GEMM `linear` runs on a partition: cuBLAS or the persistent Triton matmul.

Measured, not modelled (benchmarks/results/kernels_h100_*: on an H100, cuBLAS is 15-35% faster
on the whole GPU and on 32/64-SM partitions, while on 96/104-SM partitions its wave-quantized
tiles lose to the Triton matmul sized to the partition in about 40% of the decode shapes). Where
a GPU has measurements (`_dispatch_data`), the faster of the two at the nearest measured point
wins: same (n, k) where measured, else the nearest by log n + log k; then the nearest token count
on a log scale; then the nearest SM count. An H200 uses the H100's table (same SMs and tensor
cores; the choice is about tiles, not bandwidth). Elsewhere cuBLAS. Pure Python.
"""

from __future__ import annotations

import functools
import math

from pipedecode.profiles.registry import gpu_key
from pipedecode.runtime.kernels._dispatch_data import MEASURED

_TABLE_OF = {"h200": "h100"}     # GPUs that use another GPU's measurements


def device_key(gpu_name: str) -> str | None:
    """The key of MEASURED for a CUDA device name (named by `registry.gpu_key`), or None when
    it has no measurements."""
    key = gpu_key(gpu_name)
    key = _TABLE_OF.get(key, key)
    return key if key in MEASURED else None


def _nearest(values, target, log: bool):
    f = (lambda v: abs(math.log(v) - math.log(target))) if log else (lambda v: abs(v - target))
    return min(values, key=f)


@functools.lru_cache(maxsize=8192)
def prefer_triton(key: str | None, tokens: int, n: int, k: int, sm_count: int) -> bool:
    """True where the Triton matmul measured faster than cuBLAS at the nearest measured point."""
    if key is None or key not in MEASURED or min(tokens, n, k, sm_count) <= 0:
        return False
    rows = MEASURED[key]
    shapes = {(r[0], r[1]) for r in rows}
    shape = min(shapes, key=lambda s: abs(math.log(s[0] / n)) + abs(math.log(s[1] / k)))
    rows = [r for r in rows if (r[0], r[1]) == shape]
    t = _nearest({r[2] for r in rows}, tokens, log=True)
    rows = [r for r in rows if r[2] == t]
    s = _nearest({r[3] for r in rows}, sm_count, log=False)
    row = next(r for r in rows if r[3] == s)
    return row[4] < row[5]
