"""Packed decoder weights: what the decode step reads, laid out as its kernels want them.

Owns `PackedWeights` (q/k/v fused into one [q+2kv, hidden] matrix, gate/up fused into one
[2*intermediate, hidden] matrix, norms, embeddings, LM head and the RoPE cos/sin table) and the two
ways to make one: from a Hugging Face Llama/Mistral/Qwen2 model, or random for a `ModelShape`
(benchmarks at real shapes, no checkpoint). Knows nothing of streams, partitions or schedules.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    shape = model_shape(model)
    inner = model.model
    layers = []
    with torch.no_grad():
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            bias = None
            if attn.q_proj.bias is not None:
                bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            layers.append(LayerWeights(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=qkv.contiguous(), qkv_bias=bias,
                o_proj=attn.o_proj.weight.detach(),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous(),
                down=mlp.down_proj.weight.detach()))
        rotary = inner.rotary_emb
        positions = max_positions or model.config.max_position_embeddings
        cos, sin = rope_table(rotary.inv_freq, positions,
                              float(getattr(rotary, "attention_scaling", 1.0)),
                              inner.embed_tokens.weight.dtype)
        return PackedWeights(
            shape=shape, embed=inner.embed_tokens.weight.detach(),
            layers=tuple(layers), final_norm=inner.norm.weight.detach(),
            lm_head=model.lm_head.weight.detach(), rope_cos=cos, rope_sin=sin,
            rms_eps=float(model.config.rms_norm_eps))


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
