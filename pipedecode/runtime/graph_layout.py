"""Which input of a TorchDynamo decode graph is which: the executor's view of a decode step.

Owns `recognize` and `DecodeGraph`. Dynamo hands the torch.compile backend one FX graph per step
shape; for the decode step of a Llama-family model with transformers' StaticCache (one new token
per request) the graph's inputs are the token ids, the position ids, a 4-D attention mask, per
layer the cache's keys, values and write counter, and the parameters. `recognize` finds which
input is which by what the graph does with it, never by the names Dynamo gives them (they change
between transformers releases): the token ids are what the embedding looks up; the caches what
each attention reads as keys and values, whole, and what the cache update writes in place
(`index_copy_` on the sequence axis, at a position computed from the layer's counter, which the
graph advances by one); the position ids and RoPE frequencies what the rotary angles are made
of; the mask what every attention is masked with; each weight is named by the linear call or
RMSNorm that uses it, in order within its layer, each order checked by use (q feeds the
attention's queries, k and v the cache writes, o reads the attention's output, gate goes through
SiLU). It reads the constants the executor needs (RMSNorm epsilon, RoPE scaling), or says in a
sentence why the graph is not one it serves. Knows nothing of the executor or of how the step is
run (graph_decode.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx
from torch.fx import Node

from pipedecode.models import ModelShape


@dataclass(frozen=True)
class DecodeGraph:
    """Where the executor's inputs sit in a decode graph's argument list, and its constants."""

    shape: ModelShape
    batch_size: int
    max_context: int                 # the static cache's length
    input_ids: int
    position_ids: int
    attention_mask: int
    keys: tuple[int, ...]
    values: tuple[int, ...]
    counters: tuple[int, ...]        # each layer's cache write counter (the slot written next)
    params: tuple[tuple[str, int], ...]   # (transformers name, argument index)
    inv_freq: int
    rms_eps: float
    attention_scaling: float
    logits_dtype: torch.dtype


class _NotServed(Exception):
    """Raised inside recognition with the sentence `recognize` returns."""


_SDPA = "scaled_dot_product_attention"
_STOPS = ("linear", "embedding", _SDPA)     # where walks through the residual stream end
# Ops between a cache input and the attention that reads it whole (GQA's repeat_kv: a new axis,
# expand, reshape).
_LAYOUT = ("getitem", "expand", "reshape", "view", "contiguous", "unsqueeze", "repeat_interleave",
           "flatten")


def _op(node: Any) -> str:
    target = getattr(node, "target", None)
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _walk(starts: Iterable[Node], step: Callable[[Node], Iterable[Node]],
          stop: Callable[[Node], bool]) -> set[Node]:
    """Where walks from `starts` along `step` end: at nodes `stop` accepts, and at graph inputs."""
    ends, seen, todo = set(), set(), [n for n in starts if isinstance(n, Node)]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "placeholder" or stop(node):
            ends.add(node)
        else:
            todo.extend(step(node))
    return ends


def _back(nodes: Any, stops: Sequence[str] = _STOPS) -> set[Node]:
    """Where walks back from `nodes` (one or a list) end: at `stops` calls and graph inputs."""
    starts = nodes if isinstance(nodes, list) else [nodes]
    return _walk(starts, lambda n: n.all_input_nodes, lambda n: _op(n) in stops)


def _arg(node: Node, i: int, name: str) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


def _shape(node: Any) -> tuple[int, ...] | None:
    value = node.meta.get("example_value") if isinstance(node, Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _whole(index: Any) -> bool:
    """Whether a getitem index keeps every element: only `:`, `...` and new axes."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or i == slice(None) for i in items)


def _expected_shapes(s: ModelShape) -> dict[str, tuple[int, ...]]:
    """Each weight's shape by its name's last two parts (layers) or its whole name."""
    q, kv, h, inter = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size, \
        s.intermediate_size
    return {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
            "q_proj.weight": (q, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h),
            "o_proj.weight": (h, q), "q_proj.bias": (q,), "k_proj.bias": (kv,),
            "v_proj.bias": (kv,), "gate_proj.weight": (inter, h), "up_proj.weight": (inter, h),
            "down_proj.weight": (h, inter), "model.embed_tokens.weight": (s.vocab_size, h),
            "model.norm.weight": (h,), "lm_head.weight": (s.vocab_size, h),
            "model.rotary_emb.inv_freq": (s.head_dim // 2,)}


@dataclass(frozen=True)
class _Layer:
    sdpa: Node
    keys: Node
    values: Node
    counter: Node
    new_keys: Node        # what the cache update writes: the RoPE'd keys, the values
    new_values: Node


class _Recognizer:
    """One pass over a graph that gives each input its role by its use, or raises _NotServed."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        self.gm = gm
        self.inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(self.inputs) != len(example_inputs):
            raise _NotServed("the graph's inputs do not match its example inputs")
        self.value = dict(zip(self.inputs, example_inputs))
        for node, value in self.value.items():
            if not isinstance(value, torch.Tensor):
                raise _NotServed(f"graph input {node.target!r} is a {type(value).__name__}, not a "
                                 f"tensor (a symbolic size: compile with dynamic=False)")
        self.calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
        self.roles: dict[Node, str] = {}

    def of(self, op: str) -> list[Node]:
        return [n for n in self.calls if _op(n) == op]

    def claim(self, node: Any, role: str) -> Node:
        if not isinstance(node, Node) or node.op != "placeholder":
            raise _NotServed(f"the {role} is computed inside the graph, not one of its inputs")
        if self.roles.setdefault(node, role) != role:
            raise _NotServed(f"graph input {node.target!r} is used as both the "
                             f"{self.roles[node]} and the {role}")
        return node

    def tokens(self) -> None:
        lookups = self.of("embedding")
        if len(lookups) != 1:
            raise _NotServed(f"{len(lookups)} embedding lookups in the graph, not one of token "
                             f"ids given as an input (inputs_embeds are not served)")
        self.ids = self.claim(lookups[0].args[0], "input_ids")
        self.embed = self.claim(lookups[0].args[1], "model.embed_tokens.weight")
        t = self.value[self.ids]
        if t.dim() != 2 or t.is_floating_point():
            raise _NotServed(f"the token ids are a {tuple(t.shape)} {t.dtype} tensor, not "
                             f"[batch, tokens] integers")
        if t.shape[1] != 1:
            raise _NotServed(f"input_ids {tuple(t.shape)} is not one new token per request "
                             f"(prefill)")
        self.batch = t.shape[0]

    def attention(self) -> list[_Layer]:
        calls = self.of(_SDPA)
        if not calls:
            raise _NotServed("no scaled_dot_product_attention in the graph: the executor serves "
                             "SDPA attention (attn_implementation='sdpa')")
        layers, masks = [], set()
        for i, sdpa in enumerate(calls):
            _check_sdpa(i, sdpa, self.batch)
            keys, values = self.cache(i, sdpa, 1, "keys"), self.cache(i, sdpa, 2, "values")
            new_keys, counter = self.cache_write(i, keys, "keys")
            new_values, also = self.cache_write(i, values, "values")
            if also is not counter:
                raise _NotServed(f"layer {i}'s keys and values are written at positions from "
                                 f"different counters")
            self.claim(counter, f"layer {i} cache counter")
            mask = _arg(sdpa, 3, "attn_mask")
            if mask is None:
                raise _NotServed(f"layer {i}'s attention has no mask: the executor needs the "
                                 f"left-padded cache's mask as an input")
            masks.add(self.through_layout(mask))
            layers.append(_Layer(sdpa, keys, values, counter, new_keys, new_values))
        if len(masks) != 1:
            raise _NotServed(f"the attentions are masked by {len(masks)} different tensors, not "
                             f"by one")
        self.mask = self.claim(masks.pop(), "attention_mask")
        return layers

    def through_layout(self, node: Any) -> Any:
        """The tensor `node` shows whole (through new axes, expand, reshape: GQA's repeat_kv)."""
        while isinstance(node, Node) and _op(node) in _LAYOUT and node.op != "placeholder":
            if _op(node) == "getitem" and not _whole(node.args[1]):
                break
            node = node.args[0]
        return node

    def cache(self, i: int, sdpa: Node, arg: int, what: str) -> Node:
        node = self.through_layout(sdpa.args[arg])
        if not isinstance(node, Node) or node.op != "placeholder":
            raise _NotServed(f"layer {i}'s attention {what} come from {_op(node)} in the graph, "
                             f"not from a cache input read whole: a StaticCache is needed")
        t, read = self.value[node], _shape(sdpa.args[arg])
        if t.dim() != 4 or not t.is_floating_point() or t.shape[0] != self.batch or \
                read is None or read[-2:] != tuple(t.shape[2:]):
            raise _NotServed(f"layer {i}'s attention {what} are read from a {tuple(t.shape)} "
                             f"{t.dtype} input, not a [batch, kv_heads, max_context, head_dim] "
                             f"cache")
        return self.claim(node, f"layer {i} {what}")

    def cache_write(self, i: int, cache: Node, what: str) -> tuple[Any, Node]:
        """(what is written, the counter the position comes from) of the cache's one update."""
        writes = [u for u in cache.users if _op(u) in ("index_copy_", "setitem")]
        if len(writes) != 1 or writes[0].args[0] is not cache:
            raise _NotServed(f"layer {i}'s {what} cache is written {len(writes)} times in the "
                             f"graph, not once in place (index_copy_ on the sequence axis, as "
                             f"StaticCache does)")
        write = writes[0]
        if _op(write) == "index_copy_":
            on_axis = _arg(write, 1, "dim") in (2, -2)
            index, source = _arg(write, 2, "index"), _arg(write, 3, "source")
        else:                                      # cache[:, :, index] = source
            key, source = write.args[1], write.args[2]
            on_axis = isinstance(key, tuple) and len(key) == 3 and \
                key[0] == slice(None) == key[1] and isinstance(key[2], Node)
            index = key[2] if on_axis else None
        if not on_axis or _shape(index) != (1,):
            raise _NotServed(f"layer {i}'s {what} cache is not written at one position of its "
                             f"sequence axis per step")
        counters = [n for n in _back(index, ()) if n.op == "placeholder"]
        if len(counters) != 1 or self.value[counters[0]].is_floating_point() or \
                self.value[counters[0]].numel() != 1:
            raise _NotServed(f"layer {i}'s {what} cache write position does not come from one "
                             f"integer counter input")
        if not any(_op(u) == "add_" and tuple(u.args[1:]) == (1,) for u in counters[0].users):
            raise _NotServed(f"layer {i}'s cache counter is not advanced by one in the graph")
        return source, counters[0]

    def rotary(self, layers: list[_Layer]) -> None:
        """The position ids and inv_freq the RoPE angles are made of; RoPE on q and k, not v."""
        angles = self.of("cos") + self.of("sin")
        made_of = {n for n in _back(angles, ()) if n.op == "placeholder"}
        ints = [n for n in made_of if not self.value[n].is_floating_point()]
        floats = [n for n in made_of if self.value[n].is_floating_point()]
        if not angles or len(ints) != 1 or len(floats) != 1:
            raise _NotServed("the rotary angles do not come from one position-ids input and one "
                             "inv_freq input")
        if tuple(self.value[ints[0]].shape) != (self.batch, 1):
            raise _NotServed(f"position_ids {tuple(self.value[ints[0]].shape)} is not one "
                             f"position per request")
        self.positions = self.claim(ints[0], "position_ids")
        self.inv_freq = self.claim(floats[0], "model.rotary_emb.inv_freq")
        rope = {self.positions, self.inv_freq}
        for i, layer in enumerate(layers):
            if not (rope <= _back(layer.sdpa.args[0]) and rope <= _back(layer.new_keys)) or \
                    rope & _back(layer.new_values):
                raise _NotServed(f"layer {i} does not apply RoPE to its queries and keys alone")

    def projection(self, node: Any, what: str) -> Node:
        linears = [n for n in _back(node) if _op(n) == "linear"]
        if len(linears) != 1:
            raise _NotServed(f"{what} do not come from one linear projection")
        return linears[0]

    def projections(self, layers: list[_Layer]) -> None:
        """Name each weight by its linear call, in order within its layer, checked by use."""
        linears = self.of("linear")
        if len(linears) != 7 * len(layers) + 1:
            raise _NotServed(f"{len(linears)} linear layers for {len(layers)} decoder layers: "
                             f"not the plain Llama-family block the executor runs")
        if len(self.of("rsqrt")) != 2 * len(layers) + 1:
            raise _NotServed("the graph's norms are not two RMSNorms per layer and a final one")
        self.biased: set[str] = set()
        for i, layer in enumerate(layers):
            self.layer_params(i, layer, linears[7 * i:7 * i + 7])
        self.lm_head = linears[-1]
        self.norm(_arg(self.lm_head, 0, "input"), "model.norm.weight")
        if _arg(self.lm_head, 1, "weight") is not self.embed:       # else tied to the embedding
            self.weight(self.lm_head, "lm_head", bias=False)

    def layer_params(self, i: int, layer: _Layer, chunk: list[Node]) -> None:
        q, k, v = (self.projection(n, f"layer {i}'s {what}") for n, what in (
            (layer.sdpa.args[0], "queries"), (layer.new_keys, "new keys"),
            (layer.new_values, "new values")))
        if set(chunk[:3]) != {q, k, v} or \
                len({_arg(n, 0, "input") for n in (q, k, v)}) != 1:
            raise _NotServed(f"layer {i}'s first three linear calls are not its q/k/v "
                             f"projections of one input")
        after = _walk(layer.sdpa.users, lambda n: n.users,
                      lambda n: _op(n) == "linear" or n.op == "output")
        if after != {chunk[3]}:
            raise _NotServed(f"layer {i}'s attention output does not go through its fourth "
                             f"linear call alone")
        first, second, down = chunk[4:]
        gates = [n for n in (first, second) if any(_op(u) == "silu" for u in n.users)]
        if _arg(first, 0, "input") is not _arg(second, 0, "input") or len(gates) != 1:
            raise _NotServed(f"layer {i}'s MLP is not SiLU(gate) * up of one input (the "
                             f"executor's fused gate/up applies SiLU)")
        gate, up = (first, second) if gates[0] is first else (second, first)
        if _back(_arg(down, 0, "input"), ("linear",)) != {gate, up}:
            raise _NotServed(f"layer {i}'s down projection does not read its gate and up alone")
        p = f"model.layers.{i}."
        self.norm(_arg(q, 0, "input"), p + "input_layernorm.weight")
        self.norm(_arg(gate, 0, "input"), p + "post_attention_layernorm.weight")
        for node, name in ((q, "self_attn.q_proj"), (k, "self_attn.k_proj"),
                           (v, "self_attn.v_proj"), (chunk[3], "self_attn.o_proj"),
                           (gate, "mlp.gate_proj"), (up, "mlp.up_proj"),
                           (down, "mlp.down_proj")):
            self.weight(node, p + name, bias=node in (q, k, v))

    def weight(self, linear: Node, name: str, *, bias: bool) -> None:
        self.claim(_arg(linear, 1, "weight"), name + ".weight")
        b = _arg(linear, 2, "bias")
        if b is not None:
            if not bias:
                raise _NotServed(f"{name} has a bias; the executor's projection has none")
            self.claim(b, name + ".bias")
            self.biased.add(name)

    def norm(self, x: Any, name: str) -> None:
        """The RMSNorm weight that scales `x`: the one 1-D input within three steps back."""
        found, frontier = set(), [x]
        for _ in range(3):
            ahead = []
            for node in frontier:
                if not isinstance(node, Node) or _op(node) in _STOPS:
                    continue
                if node.op != "placeholder":
                    ahead.extend(node.all_input_nodes)
                elif self.value[node].dim() == 1 and self.value[node].is_floating_point():
                    found.add(node)
            frontier = ahead
        if len(found) != 1:
            raise _NotServed(f"no single RMSNorm weight found for {name}")
        self.claim(found.pop(), name)

    def layout(self) -> DecodeGraph:
        self.tokens()
        layers = self.attention()
        self.rotary(layers)
        self.projections(layers)
        left = [n for n in self.inputs if n not in self.roles]
        if left:
            t = self.value[left[0]]
            raise _NotServed(f"graph input {left[0].target!r} ({tuple(t.shape)} {t.dtype}) has "
                             f"no role the executor knows")
        shape = self.model_shape(layers)
        out = self.gm.graph.output_node().args[0]
        out = out if isinstance(out, (tuple, list)) else (out,)
        if len(out) != 1 or _back(out[0], ("linear",)) != {self.lm_head} or \
                _shape(out[0]) != (self.batch, 1, shape.vocab_size):
            raise _NotServed("the graph does not return the logits alone ([batch, 1, vocab])")
        eps = set(_constant_after(self.calls, "mean", "add"))
        scaling = set(_constant_after(self.calls, "cos", "mul")) or {1.0}
        if len(eps) != 1 or len(scaling) != 1:
            raise _NotServed("could not read one RMSNorm epsilon and one RoPE scaling from the "
                             "graph")
        index = {n: i for i, n in enumerate(self.inputs)}
        params = {role: index[n] for n, role in self.roles.items() if role.startswith(("model.",
                                                                                      "lm_head."))}
        return DecodeGraph(
            shape=shape, batch_size=self.batch, max_context=self.value[layers[0].keys].shape[2],
            input_ids=index[self.ids], position_ids=index[self.positions],
            attention_mask=index[self.mask], keys=tuple(index[la.keys] for la in layers),
            values=tuple(index[la.values] for la in layers),
            counters=tuple(index[la.counter] for la in layers),
            params=tuple(sorted(params.items())), inv_freq=index[self.inv_freq],
            rms_eps=eps.pop(), attention_scaling=scaling.pop(),
            logits_dtype=out[0].meta["example_value"].dtype)

    def model_shape(self, layers: list[_Layer]) -> ModelShape:
        """The model's shape from the graph's tensors, each checked against it."""
        caches = [self.value[n] for layer in layers for n in (layer.keys, layer.values)]
        embed, named = self.value[self.embed], {r: self.value[n] for n, r in self.roles.items()}
        if any(c.shape != caches[0].shape or c.dtype != embed.dtype for c in caches):
            raise _NotServed("the layers' caches are not all one [batch, kv_heads, max_context, "
                             "head_dim] shape in the model's dtype")
        if self.biased and len(self.biased) != 3 * len(layers):
            raise _NotServed("some q/k/v projections have a bias and some not")
        _, kv_heads, max_context, head_dim = caches[0].shape
        try:
            shape = ModelShape(
                name="graph", family="qwen2" if self.biased else "llama",
                hidden_size=embed.shape[1],
                intermediate_size=named["model.layers.0.mlp.gate_proj.weight"].shape[0],
                num_layers=len(layers), num_kv_heads=kv_heads, head_dim=head_dim,
                num_heads=named["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
                vocab_size=named.get("lm_head.weight", embed).shape[0],
                qkv_bias=bool(self.biased), dtype_bytes=embed.element_size())
        except ValueError as exc:
            raise _NotServed(f"the graph's tensors are not a Llama-family model's: {exc}") from None
        expected = _expected_shapes(shape)
        for role, t in named.items():
            want = expected.get(role, expected.get(".".join(role.split(".")[-2:])))
            if want is not None and tuple(t.shape) != want:
                raise _NotServed(f"{role} is {tuple(t.shape)}, not {want} as the model's other "
                                 f"tensors say")
        mask = self.value[self.mask]
        if mask.dim() != 4 or mask.shape[0] != self.batch or mask.shape[2:] != (1, max_context):
            raise _NotServed(f"the attention mask {tuple(mask.shape)} is not [batch, 1, 1, "
                             f"max_context]")
        return shape


def _check_sdpa(i: int, sdpa: Node, batch: int) -> None:
    """One query token per request, at the default scale, no causal flag, no dropout."""
    query = _shape(sdpa.args[0])
    if query is None or len(query) != 4 or query[0] != batch or query[2] != 1:
        raise _NotServed(f"layer {i}'s attention queries {query} are not one token per request")
    scale = _arg(sdpa, 6, "scale")
    if scale is not None and not math.isclose(scale, query[3] ** -0.5, rel_tol=1e-6):
        raise _NotServed(f"attention scale {scale} is not 1/sqrt(head_dim)")
    if _arg(sdpa, 5, "is_causal"):
        raise _NotServed("causal SDPA in a decode step")
    if _arg(sdpa, 4, "dropout_p"):
        raise _NotServed("attention dropout in a decode step")


def _constant_after(calls: Sequence[Node], first: str, then: str) -> list[float]:
    """Float constants c of every `then(x, c)` whose x comes from a `first` call."""
    return [n.args[1] for n in calls if _op(n) == then and len(n.args) == 2 and
            isinstance(n.args[1], float) and _op(n.args[0]) == first]


def recognize(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> DecodeGraph | str:
    """The decode step's layout, or a sentence saying why this graph is not one it serves."""
    try:
        return _Recognizer(gm, example_inputs).layout()
    except _NotServed as why:
        return str(why)


def is_prefill(gm: torch.fx.GraphModule) -> bool:
    """Whether the graph computes more than one token per request (its embedding lookup's or
    its attention queries' length): a prompt's forward, not a decode step."""
    for op, arg, axis in (("embedding", None, 1), (_SDPA, 0, 2)):
        for node in gm.graph.nodes:
            if _op(node) == op:
                shape = _shape(node if arg is None else node.args[arg])
                if shape is not None and len(shape) > axis:
                    return shape[axis] > 1
    return False
