"""FLOPs and bytes moved of one torch-IR node, from the shapes TorchDynamo recorded.

Owns which counting rule of `pipedecode.counts` a node gets, and the sizes it passes: linear
layers, scaled-dot-product attention (KV bytes at the live context length, not the static
buffer), KV-cache writes, embedding gathers, free layout ops, and the elementwise rule for
everything else, each node its own unfused kernel (an upper bound on the bytes of norms and
RoPE, which a fused kernel reads once). Knows nothing of devices, rooflines or stages, and holds
no formula of its own. Shapes come from `node.meta["example_value"]` (Dynamo) or
`node.meta["tensor_meta"]` (torch.fx ShapeProp).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx

from pipedecode import counts

LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear)
ATTENTION_TARGETS = (torch.nn.functional.scaled_dot_product_attention,)
EMBEDDING_TARGETS = (torch.nn.functional.embedding,)
# In-place writes into a cache buffer: args[0] is the buffer, the last tensor arg the new rows.
WRITE_METHODS = ("index_copy_", "index_put_", "copy_", "scatter_")
# Layout ops cost nothing: a compiled kernel reads through the view instead of copying.
LAYOUT_OPS = ("view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "expand",
              "contiguous", "flatten", "unflatten", "size", "dim", "t", "as_strided")
ANCHOR_ROLES = ("linear", "attention", "kv_write", "embedding")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    elem_bytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.elem_bytes


@dataclass(frozen=True)
class OpCost:
    # linear | attention | kv_write | embedding | layout | kv_view | elementwise | other
    role: str
    flops: int
    bytes_moved: int

    @property
    def is_anchor(self) -> bool:
        """Anchors decide a stage's bound; every other node joins a neighbouring anchor's stage."""
        return self.role in ANCHOR_ROLES


def _int(value) -> int:
    if isinstance(value, torch.SymInt):
        hint = getattr(value.node, "hint", None)
        return int(hint) if hint is not None else 1
    return int(value)


def tensor_info(node) -> TensorInfo | None:
    """Shape and element size of the tensor a node produces, or None for non-tensors."""
    if not isinstance(node, torch.fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    if isinstance(value, torch.Tensor):
        return TensorInfo(tuple(_int(d) for d in value.shape), value.element_size())
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        elem = torch.empty((), dtype=meta.dtype).element_size()
        return TensorInfo(tuple(_int(d) for d in meta.shape), elem)
    return None


def op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))


def is_layout(node: torch.fx.Node) -> bool:
    if node.target is operator.getitem:
        return True
    name = op_name(node)
    if name == "to":
        src, out = tensor_info(node.args[0]), tensor_info(node)
        return src is not None and out is not None and src.elem_bytes == out.elem_bytes
    return node.op in ("call_method", "call_function") and name in LAYOUT_OPS


def is_write(node: torch.fx.Node) -> bool:
    """cache.index_copy_(...), cache.copy_(...) or cache[idx] = rows."""
    return (node.op == "call_method" and node.target in WRITE_METHODS) or \
        node.target is operator.setitem


def layout_root(node: torch.fx.Node) -> torch.fx.Node:
    """The node a chain of layout ops starts from (q.view(...).transpose(...) -> q)."""
    while node.op != "placeholder" and is_layout(node) and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def _tensor_args(node: torch.fx.Node) -> list[TensorInfo]:
    infos = [tensor_info(a) for a in node.all_input_nodes]
    return [i for i in infos if i is not None]


def linear_cost(node: torch.fx.Node) -> OpCost:
    """y[m, n] = x[m, k] @ w[n, k]^T (+ b[n]): 2mnk FLOPs; x, w, b read once, y written once."""
    out = tensor_info(node)
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        n, k = module.weight.shape
        has_bias = module.bias is not None
    else:
        n, k = tensor_info(node.args[1]).shape
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        has_bias = isinstance(bias, torch.fx.Node)
    c = counts.gemm(out.numel // n, n, k, out.elem_bytes, bias=has_bias)
    return OpCost("linear", c.flops, c.bytes_moved)


def attention_cost(node: torch.fx.Node, context_len: int | None) -> OpCost:
    """softmax(q k^T) v over the live context: 4 b h q c d FLOPs (two matmuls, dense).

    q: [b, h, q, d]; k, v: [b, h, L, d] where L is the static buffer and the h heads are a
    view of kv_heads (repeat_kv); bytes count K and V once per kv head at c = min(context, L),
    q and the output once, and the mask over the live columns only.
    """
    q = tensor_info(node.args[0])      # the output has q's shape and dtype
    key = node.args[1] if len(node.args) > 1 else node.kwargs["key"]
    b, h, q_len, d = q.shape
    buffer_len = tensor_info(key).shape[-2]
    live = buffer_len if context_len is None else min(context_len, buffer_len)
    root = tensor_info(layout_root(key))
    kv_heads = root.shape[1] if root is not None and len(root.shape) == 4 else h
    c = counts.attention(b * q_len, b * live, b * q_len * live, h, kv_heads, d, q.elem_bytes)
    bytes_moved = c.bytes_moved
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    mask_info = tensor_info(mask)
    if mask_info is not None:
        bytes_moved += mask_info.nbytes * live // max(mask_info.shape[-1], 1)
    return OpCost("attention", c.flops, bytes_moved)


def write_cost(node: torch.fx.Node) -> OpCost:
    """cache.index_copy_(dim, index, rows): the new rows are read once and written once."""
    infos = _tensor_args(node)
    rows = infos[-1] if len(infos) > 1 else infos[0]
    index_bytes = sum(i.nbytes for i in infos[1:-1])
    return OpCost("kv_write", 0, counts.copy(rows.nbytes).bytes_moved + index_bytes)


def elementwise_cost(node: torch.fx.Node) -> OpCost:
    """`counts.elementwise` over the node's tensor inputs and its output."""
    ins, out = _tensor_args(node), tensor_info(node)
    if out is None:
        return OpCost("other", 0, 0)
    c = counts.elementwise([(i.numel, i.nbytes) for i in ins], (out.numel, out.nbytes))
    return OpCost("elementwise", c.flops, c.bytes_moved)


def node_cost(node: torch.fx.Node, *, context_len: int | None, kv_buffers: set) -> OpCost:
    """The cost of one call node. `kv_buffers` are the nodes holding the static KV cache."""
    if node.op not in ("call_function", "call_method", "call_module"):
        return OpCost("other", 0, 0)
    if node.target in LINEAR_TARGETS or op_name(node) == "Linear":
        return linear_cost(node)
    if node.target in ATTENTION_TARGETS:
        return attention_cost(node, context_len)
    if is_write(node) and layout_root(node.args[0]) in kv_buffers:
        return write_cost(node)
    if is_layout(node):
        role = "kv_view" if layout_root(node) in kv_buffers else "layout"
        return OpCost(role, 0, 0)
    if node.target in EMBEDDING_TARGETS:       # a gather of rows, plus the ids read
        gathered = counts.copy(tensor_info(node).nbytes).bytes_moved
        return OpCost("embedding", 0, gathered + tensor_info(node.args[0]).nbytes)
    return elementwise_cost(node)


def kv_buffer_nodes(graph: torch.fx.Graph) -> set:
    """Nodes holding KV-cache buffers: cache placeholders, and any 4-D tensor written in place."""
    found = set()
    for node in graph.nodes:
        if node.op == "placeholder" and "past_key_values" in node.name and (
                node.name.endswith("_keys") or node.name.endswith("_values")):
            found.add(node)
        elif is_write(node) and isinstance(node.args[0], torch.fx.Node):
            root = layout_root(node.args[0])
            info = tensor_info(root)
            if info is not None and len(info.shape) == 4:
                found.add(root)
    return found
