"""The executor's side of co-resident mode: two plain streams sharing every SM, and their lanes.

Owns `CoresidentStreams` and `open_coresident_streams(step, attention_smem_bytes)`: the check
that co-resident mode can run this step here (a CUDA GPU, the TMA decode attention taking the
step's own buffers, a matmul tile fitting beside the attention on each SM), two ordinary CUDA
streams (no green contexts: every SM runs both sides) and the lanes the stages launch in
(`lane.coresident_lanes`: the attention within its shared-memory budget, one program per SM;
the persistent matmul within what that leaves). Where it cannot run, `CoresidentUnavailable`
says why, and the executor falls back to sequential with that reason. Knows nothing of the
slot program or graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipedecode.runtime.lane import Lane, coresident_lanes


class CoresidentUnavailable(Exception):
    """Co-resident mode cannot run this step here; the message says why."""


@dataclass(frozen=True)
class CoresidentStreams:
    memory_stream: Any           # torch.cuda.Stream: the attention's
    compute_stream: Any          # torch.cuda.Stream: every other stage's
    attention_lane: Lane
    compute_lane: Lane
    attention_smem_bytes: int    # the budget asked for


def attention_unavailable(step: Any) -> str | None:
    """Why the TMA decode attention cannot take this step's attention inputs here, or None: the
    same check the kernel makes, on the step's own buffers (one request's rows)."""
    from pipedecode.runtime.kernels import attention_tma_unavailable

    rows = slice(0, 1)
    keys, values, extra = step._cache_args(0, rows)
    starts = None if step.context_starts is None else step.context_starts[rows]
    out = step.attn[rows].view(1, step.num_heads, step.head_dim)
    return attention_tma_unavailable(step.q[rows], keys, values, step.context_lens[rows], out,
                                     extra.get("block_tables"), starts)


def open_coresident_streams(step: Any, attention_smem_bytes: int) -> CoresidentStreams:
    """Two plain streams on the step's GPU and the lanes of both sides, or CoresidentUnavailable
    saying why this step cannot run co-resident here."""
    device = step.weights.device
    if device.type != "cuda" or not torch.cuda.is_available():
        raise CoresidentUnavailable("no CUDA device: co-resident mode runs the TMA decode "
                                    "attention beside the persistent matmul on a Hopper GPU")
    if attention_smem_bytes <= 0:
        raise CoresidentUnavailable(f"the schedule's attention_smem_bytes must be positive for "
                                    f"co-resident mode, got {attention_smem_bytes}")
    why = attention_unavailable(step)
    if why is not None:
        raise CoresidentUnavailable(f"co-resident mode needs the TMA decode attention: {why}")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    try:
        attention, compute = coresident_lanes(sms, int(attention_smem_bytes), step.head_dim,
                                              step.num_heads // step.num_kv_heads,
                                              step.weights.dtype.itemsize)
    except ValueError as exc:
        raise CoresidentUnavailable(str(exc)) from None
    return CoresidentStreams(torch.cuda.Stream(device), torch.cuda.Stream(device), attention,
                             compute, int(attention_smem_bytes))
