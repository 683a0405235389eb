"""Packed decoder weights: what the decode step reads, laid out as its kernels want them.

Owns `PackedWeights` (q/k/v fused into one [q+2kv, hidden] matrix, gate/up fused into one
[2*intermediate, hidden] matrix, norms, embeddings, LM head and the RoPE cos/sin table), `Packing`
(packed weights that follow the tensors they were made from) and the ways to make them: from a
Hugging Face Llama/Mistral/Qwen2 model, from named tensors (a compiled graph's parameters), or
random for a `ModelShape` (benchmarks at real shapes, no checkpoint). Knows nothing of streams,
partitions or schedules.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from pipedecode.models import ModelShape, check_model, model_shape

ROPE_SOURCE = "model.rotary_emb.inv_freq"     # the source name of the RoPE frequencies
_FUSED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer; every matrix is [out, in] (y = x @ w.T)."""

    input_norm: torch.Tensor      # [hidden]
    qkv: torch.Tensor             # [(heads + 2 * kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None  # [(heads + 2 * kv_heads) * head_dim] (Qwen2)
    o_proj: torch.Tensor          # [hidden, heads * head_dim]
    post_norm: torch.Tensor       # [hidden]
    gate_up: torch.Tensor         # [2 * intermediate, hidden], gate rows first
    down: torch.Tensor            # [hidden, intermediate]


@dataclass(frozen=True)
class PackedWeights:
    shape: ModelShape
    embed: torch.Tensor           # [vocab, hidden]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor      # [hidden]
    lm_head: torch.Tensor         # [vocab, hidden]
    rope_cos: torch.Tensor        # [max_positions, head_dim], already scaled, in the model dtype
    rope_sin: torch.Tensor        # [max_positions, head_dim]
    rms_eps: float

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def max_positions(self) -> int:
        return self.rope_cos.shape[0]


def rope_table(inv_freq: torch.Tensor, max_positions: int, attention_scaling: float,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_positions, head_dim] computed in float32 as transformers does, then cast."""
    positions = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(positions, inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * attention_scaling).to(dtype)
    sin = (emb.sin() * attention_scaling).to(dtype)
    return cos, sin


def source_names(sources: Mapping[str, torch.Tensor], shape: ModelShape) -> tuple[str, ...]:
    """The transformers names a packing of `shape` reads, in one fixed order: per layer its norms
    and projections (q/k/v biases where `shape.qkv_bias`), then the embedding, the final norm, the
    LM head unless tied to the embedding, and the RoPE frequencies."""
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    per_layer += [f"self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    per_layer += [f"self_attn.{n}_proj.bias" for n in "qkv"] if shape.qkv_bias else []
    per_layer += [f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
    names = [f"model.layers.{i}.{leaf}" for i in range(shape.num_layers) for leaf in per_layer]
    names += ["model.embed_tokens.weight", "model.norm.weight"]
    lm_head = sources.get("lm_head.weight")
    if lm_head is not None and lm_head is not sources.get("model.embed_tokens.weight"):
        names.append("lm_head.weight")
    names.append(ROPE_SOURCE)
    missing = [n for n in names if n not in sources]
    if missing:
        raise KeyError(f"packing a {shape.num_layers}-layer {shape.family} model needs tensors "
                       f"named {missing[:3]}{' ...' if len(missing) > 3 else ''}; not given")
    return tuple(names)


class Packing:
    """PackedWeights made from named source tensors, kept current with them.

    q/k/v and gate/up are fused copies; every other tensor is shared with its source, read only,
    so packing costs the fused projections' memory and no more. `current(tensors)`, called before
    each use, costs a few Python int reads per tensor: where a source is another tensor or
    another storage than when packed (a parameter replaced, the model moved), everything is
    packed anew (a new PackedWeights); where a fused source or the RoPE frequencies changed in
    place (`load_state_dict`, an optimizer step: their version counters moved), the fused copies
    and the RoPE table are rewritten in place, so executors and CUDA graphs built on them stay
    valid. In-place changes of shared tensors need nothing: the executor reads them."""

    def __init__(self, sources: Mapping[str, torch.Tensor], shape: ModelShape, *, rms_eps: float,
                 attention_scaling: float, max_positions: int) -> None:
        self.names = source_names(sources, shape)
        self.shape, self.rms_eps, self.attention_scaling = shape, rms_eps, attention_scaling
        self.max_positions = max_positions
        self._fused = [i for i, n in enumerate(self.names)
                       if n == ROPE_SOURCE or n.split(".")[-2] in _FUSED]
        self._pack([sources[n] for n in self.names])

    def sources_of(self, tensors: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tensors `current` takes, in this packing's order, from a name -> tensor mapping."""
        return [tensors[n] for n in self.names]

    def current(self, tensors: Sequence[torch.Tensor] | None = None) -> PackedWeights:
        """The packed weights of `tensors` (this packing's sources as they are now, in the order
        of `names`; default: the tensors packed last), repacked where they changed."""
        if tensors is not None and self._moved(tensors):
            self._pack(list(tensors))
        elif self._versions_of(self._sources) != self._versions:
            self._repack()
        return self.weights

    def refresh(self, tensors: Sequence[torch.Tensor] | None = None) -> PackedWeights:
        """Repack now, whatever the version counters say (e.g. after a write they do not see,
        such as one through `tensor.data`)."""
        if tensors is not None and self._moved(tensors):
            self._pack(list(tensors))
        else:
            self._repack()
        return self.weights

    def serves(self, names: Sequence[str], tensors: Sequence[torch.Tensor], shape: ModelShape,
               rms_eps: float, attention_scaling: float, max_positions: int) -> bool:
        """Whether this packing is of these very tensors with these constants."""
        return (tuple(names) == self.names and shape == self.shape and rms_eps == self.rms_eps
                and attention_scaling == self.attention_scaling
                and max_positions <= self.weights.max_positions
                and all(map(operator.is_, tensors, self._sources)))

    def _moved(self, tensors: Sequence[torch.Tensor]) -> bool:
        return (len(tensors) != len(self._sources)
                or not all(map(operator.is_, tensors, self._sources))
                or [t.data_ptr() for t in tensors] != self._ptrs)

    def _versions_of(self, tensors: Sequence[torch.Tensor]) -> list[int]:
        return [tensors[i]._version for i in self._fused]

    def _pack(self, tensors: list[torch.Tensor]) -> None:
        self._sources = tuple(tensors)
        self._ptrs = [t.data_ptr() for t in tensors]
        self._versions = self._versions_of(tensors)
        self.weights = _pack(dict(zip(self.names, tensors)), self.shape, rms_eps=self.rms_eps,
                             attention_scaling=self.attention_scaling,
                             max_positions=self.max_positions)

    @torch.no_grad()
    def _repack(self) -> None:
        state = {n: t.detach() for n, t in zip(self.names, self._sources)}
        for i, layer in enumerate(self.weights.layers):
            attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            torch.cat([state[attn + f"{n}_proj.weight"] for n in "qkv"], out=layer.qkv)
            if layer.qkv_bias is not None:
                torch.cat([state[attn + f"{n}_proj.bias"] for n in "qkv"], out=layer.qkv_bias)
            torch.cat([state[mlp + "gate_proj.weight"], state[mlp + "up_proj.weight"]],
                      out=layer.gate_up)
        cos, sin = rope_table(state[ROPE_SOURCE], self.weights.max_positions,
                              self.attention_scaling, self.weights.dtype)
        self.weights.rope_cos.copy_(cos)
        self.weights.rope_sin.copy_(sin)
        self._versions = self._versions_of(self._sources)


@torch.no_grad()
def _pack(state: Mapping[str, torch.Tensor], shape: ModelShape, *, rms_eps: float,
          attention_scaling: float, max_positions: int) -> PackedWeights:
    def get(name: str) -> torch.Tensor:
        return state[name].detach()

    embed = get("model.embed_tokens.weight")
    lm_head = get("lm_head.weight") if "lm_head.weight" in state else embed
    layers = []
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        bias = None
        if shape.qkv_bias:
            bias = torch.cat([get(attn + f"{n}_proj.bias") for n in "qkv"])
        layers.append(LayerWeights(
            input_norm=get(p + "input_layernorm.weight"),
            qkv=torch.cat([get(attn + f"{n}_proj.weight") for n in "qkv"]).contiguous(),
            qkv_bias=bias, o_proj=get(attn + "o_proj.weight"),
            post_norm=get(p + "post_attention_layernorm.weight"),
            gate_up=torch.cat([get(mlp + "gate_proj.weight"),
                               get(mlp + "up_proj.weight")]).contiguous(),
            down=get(mlp + "down_proj.weight")))
    cos, sin = rope_table(get(ROPE_SOURCE), max_positions, attention_scaling, embed.dtype)
    return PackedWeights(shape=shape, embed=embed, layers=tuple(layers),
                         final_norm=get("model.norm.weight"), lm_head=lm_head, rope_cos=cos,
                         rope_sin=sin, rms_eps=rms_eps)


# Each live Packing, found from its embedding tensor: weakly both ways (an entry goes with its
# tensor, a packing with its last user), so that the generate path and the torch.compile backend
# of one model share one copy of the fused projections while both use it.
_LIVE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packing(sources: Mapping[str, torch.Tensor], shape: ModelShape, *, rms_eps: float,
            attention_scaling: float, max_positions: int) -> Packing:
    """The Packing of these tensors (transformers names, `ROPE_SOURCE` for the RoPE frequencies;
    "lm_head.weight" may be absent when tied to the embedding): the live one made from the very
    same tensors with the same constants (brought up to date), else a new one."""
    names = source_names(sources, shape)
    tensors = [sources[n] for n in names]
    key = sources["model.embed_tokens.weight"]
    ref = _LIVE.get(key)
    found = ref() if ref is not None else None
    if found is not None and found.serves(names, tensors, shape, rms_eps, attention_scaling,
                                          max_positions):
        found.current(tensors)
        return found
    made = Packing(sources, shape, rms_eps=rms_eps, attention_scaling=attention_scaling,
                   max_positions=max_positions)
    _LIVE[key] = weakref.ref(made)
    return made


def hf_sources(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers model's tensors by name, as a Packing reads them (the parameters
    themselves, and the rotary embedding's inv_freq buffer)."""
    state = dict(model.state_dict(keep_vars=True))
    state[ROPE_SOURCE] = model.model.rotary_emb.inv_freq
    return state


def hf_packing(model: torch.nn.Module, *, max_positions: int | None = None) -> Packing:
    """The Packing of a transformers Llama-family model's weights; the model is left untouched."""
    check_model(model)
    rotary = model.model.rotary_emb
    return packing(hf_sources(model), model_shape(model), rms_eps=float(model.config.rms_norm_eps),
                   attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
                   max_positions=max_positions or model.config.max_position_embeddings)


def pack_hf_model(model: torch.nn.Module, *, max_positions: int | None = None) -> PackedWeights:
    """The model's packed weights as they are now. The fused copies are not updated later unless
    a Packing that holds them is asked (`hf_packing(model).current()`), as ExecutorGenerate and
    the torch.compile backend do before each use."""
    return hf_packing(model, max_positions=max_positions).weights


def random_weights(shape: ModelShape, *, max_positions: int, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                   rope_theta: float = 10000.0, num_layers: int | None = None) -> PackedWeights:
    """Random weights of a real shape (std 0.02, norms near 1): for benchmarks, never for output."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden, q = shape.hidden_size, shape.num_heads * shape.head_dim
    qkv_rows = q + 2 * shape.num_kv_heads * shape.head_dim

    def mat(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=gen, device=device, dtype=torch.float32)
                .mul_(0.02).to(dtype))

    def norm(n: int) -> torch.Tensor:
        return torch.ones(n, device=device, dtype=dtype)

    layers = tuple(LayerWeights(
        input_norm=norm(hidden), qkv=mat(qkv_rows, hidden),
        qkv_bias=mat(1, qkv_rows)[0] if shape.qkv_bias else None,
        o_proj=mat(hidden, q), post_norm=norm(hidden),
        gate_up=mat(2 * shape.intermediate_size, hidden),
        down=mat(hidden, shape.intermediate_size)) for _ in range(num_layers or shape.num_layers))
    dim = shape.head_dim
    inv_freq = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim))
    cos, sin = rope_table(inv_freq, max_positions, 1.0, dtype)
    return PackedWeights(shape=shape, embed=mat(shape.vocab_size, hidden), layers=layers,
                         final_norm=norm(hidden), lm_head=mat(shape.vocab_size, hidden),
                         rope_cos=cos, rope_sin=sin, rms_eps=1e-5)
