"""The decode-step benchmark's points: the grid, the context lengths, what fits, the floors.

Owns the (model, batch, context) grid shared by the benchmark and the scripts that plan or check
it (plan_grid.py, corun_model_check.py), the names of points (`{model}_b{batch}_c{context}`,
`{model}_b{batch}_mixed`), the memory check of a point and its floors from the cost model.
Pure: no GPU, no timing.
"""

from __future__ import annotations

import torch

GRID = {"llama-3-8b": [(64, 512), (64, 1024), (64, 2048), (64, 4096), (128, 512), (128, 1024),
                       (128, 2048), (256, 512), (256, 1024), (512, 512), (1024, 512)],
        "llama-2-7b": [(64, 512), (64, 1024), (64, 2048), (128, 512), (256, 512)]}
MIXED = {"llama-3-8b": (256, 64, 1024), "llama-2-7b": (64, 64, 1024)}  # batch, min, max ctx
SLACK = 16  # cache positions beyond the longest context


def context_lens_for(batch: int, context: int | None, mixed: tuple | None, seed: int = 0):
    """`batch` lengths of `context`, or for a mixed point lengths drawn in [min, max]."""
    if mixed is None:
        return [context] * batch
    gen = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(mixed[1], mixed[2] + 1, (batch,), generator=gen)]


def point_name(model: str, batch: int, context: int | None) -> str:
    return f"{model}_b{batch}_" + (f"c{context}" if context is not None else "mixed")


def grid_points(model: str, extra=(), only=()) -> list[tuple[int, int | None, tuple | None]]:
    """(batch, context or None, mixed or None) of a model's grid, the extra (batch, context)
    points and its mixed point; `only` keeps those named "64x512" or "mixed"."""
    points = [(b, c, None) for b, c in GRID[model] + list(extra)] \
        + [(MIXED[model][0], None, MIXED[model])]
    if only:
        points = [p for p in points if (f"{p[0]}x{p[1]}" if p[2] is None else "mixed") in only]
    return points


def in_grid(model: str, batch: int, context) -> bool:
    return isinstance(context, str) or (batch, context) in [tuple(p) for p in GRID.get(model, [])]


def fits(shape, batch: int, max_context: int, free_bytes: int) -> bool:
    """Whether weights (embedding and head untied), the KV cache and the largest activations of
    a point fit in `free_bytes`, with 8% to spare."""
    weights = (shape.weight_bytes_per_layer() * shape.num_layers
               + 2 * shape.vocab_size * shape.hidden_size * shape.dtype_bytes)
    kv = shape.kv_bytes_per_token() * batch * max_context
    activations = batch * (shape.vocab_size + 4 * shape.intermediate_size) * 4
    return weights + kv + activations < 0.92 * free_bytes


def balanced_groups(lens: list[int], n: int = 2) -> list[list[int]]:
    """n micro-batches of equal size and near-equal KV tokens (longest first, dealt in turn)."""
    order = sorted(range(len(lens)), key=lambda r: -lens[r])
    return [order[i::n] for i in range(n)]


def floors_us(shape, lens: list[int], profile, micro_batches: int = 2) -> dict[str, float]:
    """The least time of a step (`CostModel.floor_us` of `counts.step`: weights once), of an
    overlapped step of `micro_batches` balanced micro-batches (each reads the weights again),
    and the sequential step's own floor (`CostModel.op_floor_us`: the sum over its ops)."""
    from pipedecode import counts
    from pipedecode.planner.cost import CostModel

    cost = CostModel(shape, profile)
    halves = counts.total(counts.step(shape, len(g), sum(lens[r] for r in g))
                          for g in balanced_groups(lens, micro_batches))
    return {"roofline_floor_us": cost.roofline_floor_us(len(lens), sum(lens)),
            "interleaved_floor_us": cost.floor_us(halves),
            "op_floor_us": cost.op_floor_us(len(lens), sum(lens))}
