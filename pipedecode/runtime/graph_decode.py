"""A TorchDynamo decode graph of a transformers model, served by the executor.

Owns `recognize` and `GraphDecode`: what the `torch.compile` backend runs on a GPU. Dynamo hands
the backend one FX graph per step shape; for the decode step of a Llama-family model with
transformers' StaticCache (one new token per request) the graph's inputs are the token ids, the
position ids, a 4-D attention mask, per layer the cache's keys, values and write counter, and the
parameters. `recognize` maps each input to its role and reads the constants the executor needs
(RMSNorm epsilon, RoPE scaling), or says in a sentence why the graph is not one it serves.
`GraphDecode` packs the weights once, plans the batch, and on each call runs the step on the
executor with transformers' own cache tensors, written in place, and returns the logits as the
graph would. Before each step it checks on the GPU (one host sync, as transformers' generate
makes each step anyway) that the mask is what a left-padded cache gives, [start_b, slot] per
request; any other mask, or anything else it does not serve, runs the graph's stages instead.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx

from pipedecode.models import ModelShape

_PARAM = re.compile(r"^L_\w*?_modules_(?P<path>.+)_(?P<kind>parameters|buffers)_(?P<leaf>[a-z_]+?)_$")
_CACHE = re.compile(r"past_key_values_layers_(?P<layer>\d+)_(?P<what>keys|values|cumulative_length)$")
_KWARGS = ("input_ids", "position_ids", "attention_mask")
_KWARG = re.compile(r"(?:^|_)(?P<kw>input_ids|position_ids|attention_mask)(?:_full_attention)?_$")
_LAYER_PARAMS = ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                 "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                 "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                 "mlp.down_proj.weight")


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
    counters: tuple[int, ...]        # each layer's cumulative_length (the slot written next)
    params: tuple[tuple[str, int], ...]   # (transformers name, argument index)
    inv_freq: int
    rms_eps: float
    attention_scaling: float
    logits_dtype: torch.dtype


def _hf_name(path: str, leaf: str) -> str:
    return ".".join(path.split("_modules_")) + "." + leaf


def _constant_after(gm: torch.fx.GraphModule, first: str, then: str) -> list[float]:
    """Float constants c of every `then(x, c)` whose x comes from a `first` call."""
    found = []
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", node.target)
        if name == then and len(node.args) == 2 and isinstance(node.args[1], float):
            src = node.args[0]
            if isinstance(src, torch.fx.Node) and getattr(src.target, "__name__",
                                                          src.target) == first:
                found.append(node.args[1])
    return found


def recognize(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> DecodeGraph | str:
    """The decode step's layout, or a sentence saying why this graph is not one it serves."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        return "the graph's inputs do not match its example inputs"
    roles: dict[str, int] = {}
    cache: dict[tuple[int, str], int] = {}
    params: dict[str, int] = {}
    for i, node in enumerate(placeholders):
        name = node.target
        if (m := _PARAM.match(name)) is not None:
            params[_hf_name(m["path"], m["leaf"])] = i
        elif (m := _CACHE.search(name)) is not None:
            cache[(int(m["layer"]), m["what"])] = i
        elif (m := _KWARG.search(name)) is not None:     # Qwen2: a dict of masks by layer type
            roles[m["kw"]] = i
        else:
            return f"graph input {name!r} is not one the executor knows"
    missing = [k for k in _KWARGS if k not in roles]
    if missing:
        return f"the decode graph has no {', '.join(missing)} input"
    ids = example_inputs[roles["input_ids"]]
    if ids.dim() != 2 or ids.shape[1] != 1:
        return f"input_ids {tuple(ids.shape)} is not one new token per request (prefill)"
    num_layers = len({layer for layer, _ in cache})
    for layer in range(num_layers):
        for what in ("keys", "values", "cumulative_length"):
            if (layer, what) not in cache:
                return f"layer {layer} has no static-cache {what} input (a static cache is needed)"
        for leaf in _LAYER_PARAMS:
            if f"model.layers.{layer}.{leaf}" not in params:
                return f"no parameter model.layers.{layer}.{leaf}"
    if num_layers == 0:
        return "no static-cache inputs: not a decode step with transformers' StaticCache"
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.rotary_emb.inv_freq"):
        if name not in params:
            return f"no parameter {name}"
    keys = example_inputs[cache[(0, "keys")]]
    batch, kv_heads, max_context, head_dim = keys.shape
    q_rows = example_inputs[params["model.layers.0.self_attn.q_proj.weight"]].shape[0]
    embed = example_inputs[params["model.embed_tokens.weight"]]
    lm_head = example_inputs[params.get("lm_head.weight", params["model.embed_tokens.weight"])]
    gate = example_inputs[params["model.layers.0.mlp.gate_proj.weight"]]
    bias = "model.layers.0.self_attn.q_proj.bias" in params
    shape = ModelShape(name="graph", family="qwen2" if bias else "llama",
                       hidden_size=embed.shape[1], intermediate_size=gate.shape[0],
                       num_layers=num_layers, num_heads=q_rows // head_dim,
                       num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=lm_head.shape[0],
                       qkv_bias=bias, dtype_bytes=embed.element_size())
    why = _check_ops(gm, num_layers, head_dim)
    if why:
        return why
    out = gm.graph.output_node().args[0]
    out = out if isinstance(out, (tuple, list)) else (out,)
    value = out[0].meta.get("example_value") if len(out) == 1 and isinstance(
        out[0], torch.fx.Node) else None
    if value is None or tuple(value.shape) != (batch, 1, shape.vocab_size):
        return "the graph does not return the logits alone ([batch, 1, vocab])"
    eps = set(_constant_after(gm, "mean", "add"))
    scaling = set(_constant_after(gm, "cos", "mul")) or {1.0}
    if len(eps) != 1 or len(scaling) != 1:
        return "could not read one RMSNorm epsilon and one RoPE scaling from the graph"
    return DecodeGraph(
        shape=shape, batch_size=batch, max_context=max_context,
        input_ids=roles["input_ids"], position_ids=roles["position_ids"],
        attention_mask=roles["attention_mask"],
        keys=tuple(cache[(i, "keys")] for i in range(num_layers)),
        values=tuple(cache[(i, "values")] for i in range(num_layers)),
        counters=tuple(cache[(i, "cumulative_length")] for i in range(num_layers)),
        params=tuple(sorted(params.items())), inv_freq=params["model.rotary_emb.inv_freq"],
        rms_eps=eps.pop(), attention_scaling=scaling.pop(), logits_dtype=value.dtype)


def _check_ops(gm: torch.fx.GraphModule, num_layers: int, head_dim: int) -> str | None:
    """The graph is a plain Llama-family step: 7 projections per layer plus the LM head, one SDPA
    per layer at the default scale."""
    names = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
             if n.op in ("call_function", "call_method")]
    if names.count("linear") != 7 * num_layers + 1:
        return (f"{names.count('linear')} linear layers for {num_layers} decoder layers: not the "
                f"plain Llama-family block the executor runs")
    sdpa = [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") ==
            "scaled_dot_product_attention"]
    if len(sdpa) != num_layers:
        return "the graph's attention is not one scaled_dot_product_attention per layer"
    for node in sdpa:
        scale = node.kwargs.get("scale")
        if scale is not None and not math.isclose(scale, head_dim ** -0.5, rel_tol=1e-6):
            return f"attention scale {scale} is not 1/sqrt(head_dim)"
        if node.kwargs.get("is_causal"):
            return "causal SDPA in a decode step"
    return None


def _contiguous(schedule: Any) -> Any:
    """The schedule with its micro-batches as consecutive request ranges of the same sizes: the
    cache rows belong to transformers, in its order, so the executor cannot regroup them."""
    if schedule is None or not getattr(schedule, "micro_batches", None):
        return schedule
    ordered = sorted(schedule.micro_batches, key=lambda m: m.index)
    lens = [c for mb in ordered for c in mb.context_lens]
    start, groups = 0, []
    for mb in ordered:
        n = len(mb.request_ids)
        groups.append(dataclasses.replace(mb, request_ids=tuple(range(start, start + n)),
                                          context_lens=tuple(lens[start:start + n])))
        start += n
    return dataclasses.replace(schedule, micro_batches=tuple(groups))


class GraphDecode:
    """The decode graph's callable: the executor where it serves the call, `fallback` elsewhere."""

    def __init__(self, layout: DecodeGraph, fallback: Callable, *, device: Any = "h100",
                 plan: bool = True) -> None:
        """fallback: the graph's stages (exact). device: the profile to plan for. plan=False:
        always sequential (tests)."""
        self.layout, self.fallback, self.device, self.plan = layout, fallback, device, plan
        self.executor = None
        self._cache_key: tuple | None = None
        self._at: torch.Tensor | None = None       # [1, max_context] positions, made once
        self.calls = {"executor": 0, "fallback": 0}
        self.last_reason: str | None = None

    def _weights(self, args):
        from pipedecode.runtime.weights import pack_state

        g = self.layout
        state = {name: args[i] for name, i in g.params}
        return pack_state(state, g.shape, rms_eps=g.rms_eps, inv_freq=args[g.inv_freq],
                          attention_scaling=g.attention_scaling, max_positions=g.max_context)

    def _executor_for(self, args, starts: torch.Tensor):
        from pipedecode.runtime.engine import plan_for
        from pipedecode.runtime.executor import Executor
        from pipedecode.runtime.step import DecodeStep

        g = self.layout
        keys = [args[i] for i in g.keys]
        values = [args[i] for i in g.values]
        key = tuple(t.data_ptr() for t in keys[:1] + values[:1]) + (g.batch_size,)
        if self.executor is not None and key == self._cache_key:
            return self.executor
        weights = self._weights(args)
        schedule, reason = None, None
        if self.plan:
            lens = (g.max_context - starts).tolist()     # each request's length at the cache's end
            schedule, reason = plan_for(weights, lens, self.device)
        step = DecodeStep(weights, g.batch_size, g.max_context, caches=(keys, values),
                          left_padded=True)
        self.executor = Executor(weights, g.batch_size, g.max_context,
                                 schedule=_contiguous(schedule), step=step, autotune=True)
        self.executor.fallback_reason = self.executor.fallback_reason or reason
        self._cache_key = key
        return self.executor

    def _step_inputs(self, args):
        """(tokens, context_lens, rope_positions, starts), or None when the mask is not a
        left-padded cache's [start_b, slot] per request."""
        g = self.layout
        counters = torch.stack([args[i] for i in g.counters])
        slot = counters[0]
        positions = args[g.position_ids][:, 0]
        starts = slot - positions
        mask = args[g.attention_mask]
        if mask.dim() != 4 or mask.shape[0] != g.batch_size or mask.shape[-1] != g.max_context:
            return None
        allowed = mask[:, 0, -1, :]
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
        if self._at is None or self._at.device != mask.device:
            self._at = torch.arange(g.max_context, device=mask.device)[None, :]
        expected = (self._at >= starts[:, None]) & (self._at <= slot)
        ok = (allowed == expected).all() & (counters == slot).all() & (starts >= 0).all() & \
            (slot < g.max_context)
        if not bool(ok):
            return None
        i32 = torch.int32
        return (args[g.input_ids][:, 0], (slot + 1).expand(g.batch_size).to(i32),
                positions.to(i32), starts.to(i32))

    @torch.no_grad()
    def __call__(self, *args):
        inputs = self._step_inputs(args)
        if inputs is None:
            self.calls["fallback"] += 1
            self.last_reason = "the attention mask is not a left-padded static cache's"
            return self.fallback(*args)
        tokens, context_lens, rope_positions, starts = inputs
        executor = self._executor_for(args, starts)
        executor.set_inputs(tokens, context_lens, rope_positions=rope_positions,
                            context_starts=starts)
        logits = executor.run()
        for i in self.layout.counters:        # what StaticCache.update does in the graph
            args[i].add_(1)
        self.calls["executor"] += 1
        g = self.layout
        return (logits.view(g.batch_size, 1, -1).to(g.logits_dtype, copy=True),)
