"""The executor's side of SM partitions: two streams on disjoint SM sets, and what was granted.

Owns `PartitionStreams` and `open_partition_streams(memory_sms, compute_sms, device)`, a thin
adapter over `pipedecode.runtime.partitions.make_partitions` (which owns green contexts and the
driver route). Raises PartitionUnavailableError, with a sentence saying what to do, where no
partitions can be made, so the executor falls back to sequential. Knows nothing of kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipedecode.errors import PartitionUnavailableError


@dataclass(frozen=True)
class PartitionStreams:
    memory_stream: Any          # torch.cuda.Stream on the memory partition
    compute_stream: Any         # torch.cuda.Stream on the compute partition
    memory_sms: int             # granted
    compute_sms: int            # granted
    requested_memory_sms: int
    requested_compute_sms: int
    source: str                 # the partitions route: "driver" (disjoint) or "torch"
    disjoint: bool
    handles: tuple = ()         # keeps the green contexts alive as long as the streams


def open_partition_streams(memory_sms: int, compute_sms: int,
                           device: torch.device | str = "cuda") -> PartitionStreams:
    """Streams on two SM partitions; PartitionUnavailableError where there are none."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise PartitionUnavailableError("SM partitions need a CUDA GPU; run in sequential mode")
    if memory_sms <= 0 or compute_sms <= 0:
        raise ValueError(f"memory_sms and compute_sms must be positive, got {memory_sms}, "
                         f"{compute_sms}")
    from pipedecode.runtime.partitions import make_partitions

    total = torch.cuda.get_device_properties(device).multi_processor_count
    pair = make_partitions(memory_sms, min(compute_sms, total - memory_sms),
                           device_index=device.index or 0)
    mem, comp = pair.memory, pair.compute
    return PartitionStreams(mem.stream, comp.stream, mem.granted_sms, comp.granted_sms,
                            memory_sms, compute_sms, mem.route, bool(pair.disjoint), (pair,))
