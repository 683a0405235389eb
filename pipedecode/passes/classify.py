"""The classification pass: the policy that says which nodes are compute- or memory-bound.

For every call node of a captured graph it writes a `NodeClass` into
`node.meta["pipedecode"]`: FLOPs, bytes moved, arithmetic intensity, its own roofline bound on
a device, the decoder layer it belongs to, and `stage_bound`, the kind of stage it should run
in. Anchors (linears, attention, KV writes, embedding) take their own bound; the cheap ops
between them (norms, RoPE, SiLU, residual adds, layout) are memory-bound by roofline but join
the stage of the anchor before them in their layer (or the next one, at a layer's start), so a
layer reads [compute: norm+qkv+rope] [memory: kv-write+attention] [compute: o_proj..MLP].
Knows nothing of how graphs are split (partition.py) or run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx

from pipedecode.passes.cost import OpCost, kv_buffer_nodes, node_cost
from pipedecode.profiles.schema import DeviceProfile

META_KEY = "pipedecode"
BOUNDS = ("compute", "memory")
PROLOGUE, EPILOGUE = "prologue", "epilogue"
_LAYER_RE = re.compile(r"layers\.(\d+)")


def module_fqn(path: str) -> str:
    """Dynamo's module path in dotted form: "L['self'].model.layers[0]" and
    "L['self']._modules['model']._modules['layers']._modules['0']" -> "model.layers.0"."""
    path = path.replace("._modules['", ".").replace("']", "").replace("L['self", "")
    return re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")


@dataclass(frozen=True)
class NodeClass:
    """What the pass decided about one node (units in the names)."""

    role: str
    segment: str            # "layer.<i>", "prologue" or "epilogue"
    layer: int | None
    flops: int
    bytes_moved: int
    bound: str              # the node's own roofline verdict
    stage_bound: str        # the kind of stage it runs in (anchors: == bound)

    @property
    def intensity_flops_per_byte(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0

    def to_dict(self) -> dict:
        return {"role": self.role, "segment": self.segment, "layer": self.layer,
                "flops": self.flops, "bytes_moved": self.bytes_moved,
                "intensity_flops_per_byte": self.intensity_flops_per_byte,
                "bound": self.bound, "stage_bound": self.stage_bound}


def roofline_bound(cost: OpCost, device: DeviceProfile) -> str:
    """'compute' when FLOPs per byte reach the device's ridge point, else 'memory'."""
    if cost.bytes_moved == 0:
        return "compute" if cost.flops else "memory"
    return "compute" if cost.flops / cost.bytes_moved >= device.ridge_flops_per_byte else "memory"


def layer_of(node: torch.fx.Node) -> int | None:
    """The decoder-layer index from Dynamo's nn_module_stack ('...model.layers.3.mlp' -> 3)."""
    stack = node.meta.get("nn_module_stack") or {}
    for entry in reversed(list(stack.values())):
        path = entry[0] if isinstance(entry, tuple) else str(entry)
        match = _LAYER_RE.search(module_fqn(path))
        if match:
            return int(match.group(1))
    return None


def _segments(nodes: list[torch.fx.Node]) -> list[str]:
    """Each node's segment; layer-less nodes between layers join the layer before them."""
    layers = [layer_of(n) for n in nodes]
    known = [i for i, layer in enumerate(layers) if layer is not None]
    if not known:
        return [PROLOGUE] * len(nodes)
    first, last = known[0], known[-1]
    segments, current = [], None
    for i, layer in enumerate(layers):
        if layer is not None:
            current = f"layer.{layer}"
        segments.append(PROLOGUE if i < first else EPILOGUE if i > last else current)
    return segments


def _stage_bounds(costs: list[OpCost], bounds: list[str], segments: list[str]) -> list[str]:
    """Anchors keep their bound; others take the previous anchor's in their segment, or the next."""
    out: list[str | None] = [None] * len(costs)
    current, pending, segment = None, [], None
    for i, (cost, seg) in enumerate(zip(costs, segments)):
        if seg != segment:
            for j in pending:
                out[j] = "memory"          # a segment without anchors is cheap elementwise work
            current, pending, segment = None, [], seg
        if cost.is_anchor:
            current = bounds[i]
            for j in pending:
                out[j] = current
            pending = []
        if current is None:
            pending.append(i)
        else:
            out[i] = current
    for j in pending:
        out[j] = "memory"
    return out


def classify(gm: torch.fx.GraphModule, device: DeviceProfile, *,
             context_len: int | None = None) -> list[torch.fx.Node]:
    """Annotate every call node of `gm` with a NodeClass; returns the annotated nodes in order.

    `context_len` is the live KV length the attention reads (tokens in the cache after this
    step); None means the whole static buffer.
    """
    if not isinstance(device, DeviceProfile):
        raise TypeError(f"classify needs a DeviceProfile, got {type(device).__name__}")
    if context_len is not None and context_len <= 0:
        raise ValueError(f"context_len must be positive, got {context_len}")
    kv_buffers = kv_buffer_nodes(gm.graph)
    nodes = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    costs = [node_cost(n, context_len=context_len, kv_buffers=kv_buffers) for n in nodes]
    bounds = [roofline_bound(c, device) for c in costs]
    segments = _segments(nodes)
    stage_bounds = _stage_bounds(costs, bounds, segments)
    for node, cost, bound, seg, stage_bound in zip(nodes, costs, bounds, segments, stage_bounds):
        layer = int(seg.split(".")[1]) if seg.startswith("layer.") else None
        node.meta[META_KEY] = NodeClass(cost.role, seg, layer, cost.flops, cost.bytes_moved,
                                        bound, stage_bound)
    return nodes


def has_decoder_layers(gm: torch.fx.GraphModule) -> bool:
    """Whether any node of `gm` comes from a decoder layer (else there is nothing to split)."""
    return any(layer_of(n) is not None for n in gm.graph.nodes if n.op != "placeholder")
