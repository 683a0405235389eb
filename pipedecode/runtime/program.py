"""The order a decode step's stages run in: micro-batch layout and the overlapped slot program.

Owns `RowLayout` (the permutation that makes every micro-batch a contiguous row range of the
static buffers) and `build_program`, which turns (micro-batches, layers, stage placement) into
slots: in each slot one micro-batch's attention runs on the memory partition while the next
compute group (post_attn of layer l-1 + pre_attn of layer l of another micro-batch) runs on the
compute partition (interleaved mode), or on the two streams that share every SM (co-resident
mode: the same program). `dependency_graph` is the program's dependency DAG (networkx): which op
must finish before which, within a side's stream and across the two; `serial_order` is a
topological order of it. Pure Python: knows nothing of tensors, streams or GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

MEMORY, COMPUTE = "memory", "compute"


@dataclass(frozen=True)
class Op:
    """One stage of one micro-batch; layer is -1 for embed and head."""

    stage: str          # embed | pre_attn | attention | post_attn | head
    layer: int
    micro_batch: int


@dataclass(frozen=True)
class Slot:
    """Ops that may run at the same time: `memory` on the memory partition, `compute` on the other."""

    memory: Op | None
    compute: tuple[Op, ...]


@dataclass(frozen=True)
class RowLayout:
    """Internal row order: order[i] is the request id held in buffer row i."""

    order: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]   # [start, stop) rows of each micro-batch

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"RowLayout.order must be a permutation of 0..{len(self.order) - 1}")
        if not self.bounds or self.bounds[0][0] != 0 or self.bounds[-1][1] != len(self.order) \
                or any(a[1] != b[0] or a[0] >= a[1] for a, b in zip(self.bounds, self.bounds[1:])) \
                or self.bounds[-1][0] >= self.bounds[-1][1]:
            raise ValueError(f"RowLayout.bounds must tile 0..{len(self.order)} with non-empty "
                             f"ranges, got {self.bounds}")

    @property
    def batch_size(self) -> int:
        return len(self.order)

    @property
    def inverse(self) -> tuple[int, ...]:
        """inverse[request_id] is the buffer row of that request."""
        inv = [0] * len(self.order)
        for row, request in enumerate(self.order):
            inv[request] = row
        return tuple(inv)

    def rows(self, micro_batch: int) -> slice:
        start, stop = self.bounds[micro_batch]
        return slice(start, stop)

    @classmethod
    def single(cls, batch_size: int) -> "RowLayout":
        return cls(tuple(range(batch_size)), ((0, batch_size),))

    @classmethod
    def from_micro_batches(cls, groups: Sequence[Sequence[int]], batch_size: int) -> "RowLayout":
        """One micro-batch per group of request ids; together they must cover 0..batch_size-1."""
        order = tuple(int(r) for group in groups for r in group)
        if sorted(order) != list(range(batch_size)):
            raise ValueError(f"micro-batches must hold each of the {batch_size} request ids "
                             f"exactly once, got {len(order)} ids")
        bounds, start = [], 0
        for group in groups:
            bounds.append((start, start + len(group)))
            start += len(group)
        return cls(order, tuple(bounds))


def compute_groups(num_micro_batches: int, num_layers: int) -> list[tuple[Op, ...]]:
    """Compute-partition work in order: group k = l * n + m ends with pre_attn(l, m).

    Groups 0..n-1 embed and run pre_attn(0); the next ones post_attn(l-1) + pre_attn(l); the last n
    post_attn(L-1) + head.
    """
    n = num_micro_batches
    groups = [(Op("embed", -1, m), Op("pre_attn", 0, m)) for m in range(n)]
    for layer in range(1, num_layers):
        groups += [(Op("post_attn", layer - 1, m), Op("pre_attn", layer, m)) for m in range(n)]
    groups += [(Op("post_attn", num_layers - 1, m), Op("head", -1, m)) for m in range(n)]
    return groups


def build_program(num_micro_batches: int, num_layers: int) -> tuple[Slot, ...]:
    """Slot 0 runs compute group 0; slot j >= 1 runs attention j-1 beside compute group j.

    Attention k = (layer k // n, micro-batch k % n) needs group k (its pre_attn), and group k + n
    (its post_attn) needs attention k, which ran n - 1 slots earlier: with n >= 2 micro-batches the
    memory and compute sides of a slot never wait for each other.
    """
    if num_micro_batches <= 0 or num_layers <= 0:
        raise ValueError("build_program needs at least one micro-batch and one layer")
    n = num_micro_batches
    groups = compute_groups(n, num_layers)
    attention = [Op("attention", k // n, k % n) for k in range(n * num_layers)]
    slots = [Slot(None, groups[0])]
    for j in range(1, len(groups)):
        slots.append(Slot(attention[j - 1] if j - 1 < len(attention) else None, groups[j]))
    return tuple(slots)


def issue_order(program: Sequence[Slot]) -> list[Op]:
    """The order the executor issues the program's ops: slot by slot, each slot's attention first,
    then its compute group (so every event is recorded before it is waited on)."""
    ops: list[Op] = []
    for slot in program:
        if slot.memory is not None:
            ops.append(slot.memory)
        ops.extend(slot.compute)
    return ops


def dependency_graph(program: Sequence[Slot]):
    """The program's ops as a networkx DiGraph, an edge u -> v where v must wait for u.

    Edge attribute `kind`: "ready" (attention(l, m) needs pre_attn(l, m)'s q, k and v), "done"
    (post_attn(l, m) needs attention(l, m)'s output), "stream" (a partition's stream runs its ops
    in the order they are issued: the compute groups one after another, the attention ops one
    after another). Node attribute `side`: MEMORY or COMPUTE. The executor's cross-stream waits
    are the "ready" and "done" edges.
    """
    import networkx as nx

    graph = nx.DiGraph()
    order = issue_order(program)
    for op in order:
        graph.add_node(op, side=MEMORY if op.stage == "attention" else COMPUTE)
    for side in (MEMORY, COMPUTE):
        ops = [op for op in order if graph.nodes[op]["side"] == side]
        graph.add_edges_from(zip(ops, ops[1:]), kind="stream")
    for op in order:
        if op.stage == "attention":
            graph.add_edge(Op("pre_attn", op.layer, op.micro_batch), op, kind="ready")
            graph.add_edge(op, Op("post_attn", op.layer, op.micro_batch), kind="done")
    return graph


def serial_order(program: Sequence[Slot]) -> list[Op]:
    """The program on one stream: a topological order of `dependency_graph`, the one closest to
    the executor's issue order (which is itself topological, so for `build_program` the two are
    the same). networkx raises NetworkXUnfeasible for a program whose dependencies form a cycle."""
    import networkx as nx

    position = {op: i for i, op in enumerate(issue_order(program))}
    return list(nx.lexicographical_topological_sort(dependency_graph(program),
                                                    key=position.__getitem__))


def stage_partitions(schedule: Any) -> dict[str, str]:
    """Which partition each stage uses, read from a Schedule's slots (defaults where absent)."""
    placement = {"pre_attn": COMPUTE, "attention": MEMORY, "post_attn": COMPUTE}
    for slot in getattr(schedule, "slots", ()) or ():
        stage, partition = getattr(slot, "stage", None), getattr(slot, "partition", None)
        if stage in placement and partition in (MEMORY, COMPUTE):
            placement[stage] = partition
    if placement["pre_attn"] != placement["post_attn"] or \
            placement["attention"] == placement["pre_attn"]:
        raise ValueError(f"the executor runs attention on one partition and pre/post_attn on the "
                         f"other; the schedule places stages as {placement}")
    return placement


def pattern_mismatch(schedule: Any) -> str | None:
    """None when the schedule's per-layer slots are the pattern `build_program` runs: in phase p,
    micro-batch p's attention beside micro-batch (p+1) % n's post_attn + pre_attn; else why not."""
    n = len(getattr(schedule, "micro_batches", ()) or ())
    slots = list(getattr(schedule, "slots", ()) or ())
    for phase in sorted({s.phase for s in slots}):
        here = [s for s in slots if s.phase == phase]
        attn = [s.micro_batch for s in here if s.stage == "attention"]
        other = {s.micro_batch for s in here if s.stage != "attention"}
        if attn != [phase] or (other and other != {(phase + 1) % n}):
            return (f"phase {phase} runs attention of micro-batch(es) {attn} beside "
                    f"{sorted(other)}; the executor runs attention of {phase} beside "
                    f"{(phase + 1) % n}")
    return None


def manual_schedule(shape: Any, context_lens: Sequence[int], groups: Sequence[Sequence[int]],
                    memory_sms: int, compute_sms: int, *, step_us: float = 1.0,
                    mode: str = "interleaved", attention_smem_bytes: int = 0) -> Any:
    """An interleaved (or co-resident) Schedule of two or more micro-batches with a fixed SM
    split (co-resident: memory_sms = compute_sms = the GPU's SMs, and the attention's shared
    memory), not planned (benchmarks, tests): the layer pattern the executor runs, in the
    planner's slot form (phase j: attention of micro-batch j beside post_attn + pre_attn of
    micro-batch (j + 1) % n)."""
    from pipedecode.planner.schedule import MicroBatch, Schedule, interleaved_pattern

    mbs = tuple(MicroBatch(i, tuple(g), tuple(context_lens[r] for r in g))
                for i, g in enumerate(groups))
    slots = interleaved_pattern(len(groups))
    return Schedule(model=shape, device="manual", mode=mode, memory_sms=memory_sms,
                    compute_sms=compute_sms, micro_batches=mbs, slots=slots,
                    predicted_step_us=step_us, sequential_step_us=step_us,
                    roofline_floor_us=step_us, attention_smem_bytes=attention_smem_bytes)
