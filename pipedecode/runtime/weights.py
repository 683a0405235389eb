"""Packed decoder weights: what the decode step reads, laid out as its kernels want them.

Owns `PackedWeights` (q/k/v fused into one [q+2kv, hidden] matrix, gate/up fused into one
[2*intermediate, hidden] matrix, norms, embeddings, LM head and the RoPE cos/sin table) and the two
ways to make one: from a Hugging Face Llama/Mistral/Qwen2 model, or random for a `ModelShape`
(benchmarks at real shapes, no checkpoint). Knows nothing of streams, partitions or schedules.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Mapping

import torch

from pipedecode.models import ModelShape, check_model, model_shape


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


def pack_hf_model(model: torch.nn.Module, *, max_positions: int | None = None) -> PackedWeights:
    """Fuse a transformers Llama-family model's weights. q/k/v and gate/up are concatenated
    (copies); every other tensor is shared with the model, read only, so packing costs the fused
    projections' memory and no more. The model is left untouched."""
    check_model(model)
    rotary = model.model.rotary_emb
    state = dict(model.state_dict(keep_vars=True))
    return pack_state(state, model_shape(model), rms_eps=float(model.config.rms_norm_eps),
                      inv_freq=rotary.inv_freq,
                      attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
                      max_positions=max_positions or model.config.max_position_embeddings)


_PACKED: "weakref.WeakValueDictionary[tuple, PackedWeights]" = weakref.WeakValueDictionary()


def pack_state(state: Mapping[str, torch.Tensor], shape: ModelShape, *, rms_eps: float,
               inv_freq: torch.Tensor, attention_scaling: float,
               max_positions: int) -> PackedWeights:
    """PackedWeights from transformers parameter names ("model.layers.0.self_attn.q_proj.weight",
    ...; "lm_head.weight" may be absent when tied to the embedding). The last packing is kept:
    packing the same tensors again (pipedecode.compile's generate and the torch.compile backend
    on one model) returns it, while anyone holds it, instead of a second copy of the fused
    projections. Weights are read when packed: later in-place updates of the model are not seen."""
    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise KeyError(f"pack_state: no tensor named {name!r}")
        return state[name].detach()

    embed = get("model.embed_tokens.weight")
    lm_head = get("lm_head.weight") if "lm_head.weight" in state else embed
    key = (embed.data_ptr(), lm_head.data_ptr(),
           get("model.layers.0.self_attn.q_proj.weight").data_ptr(), shape, max_positions,
           rms_eps, attention_scaling)
    packed = _PACKED.get(key)
    if packed is not None:
        return packed
    layers = []
    with torch.no_grad():
        for i in range(shape.num_layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            bias = None
            if attn + "q_proj.bias" in state:
                bias = torch.cat([get(attn + f"{n}_proj.bias") for n in "qkv"])
            layers.append(LayerWeights(
                input_norm=get(p + "input_layernorm.weight"),
                qkv=torch.cat([get(attn + f"{n}_proj.weight") for n in "qkv"]).contiguous(),
                qkv_bias=bias, o_proj=get(attn + "o_proj.weight"),
                post_norm=get(p + "post_attention_layernorm.weight"),
                gate_up=torch.cat([get(mlp + "gate_proj.weight"),
                                   get(mlp + "up_proj.weight")]).contiguous(),
                down=get(mlp + "down_proj.weight")))
        cos, sin = rope_table(inv_freq, max_positions, attention_scaling, embed.dtype)
    packed = PackedWeights(shape=shape, embed=embed, layers=tuple(layers),
                           final_norm=get("model.norm.weight"), lm_head=lm_head, rope_cos=cos,
                           rope_sin=sin, rms_eps=rms_eps)
    _PACKED[key] = packed
    return packed


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
