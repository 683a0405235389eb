"""Which layers each pipeline stage holds, and the weights of those layers on its device.

Owns `StageSpec` (a stage's contiguous layer range), `balanced_layers` (the simulator's
`split_layers`, pipedecode/sim/layout.py, priced by the cost model for a typical decode
micro-batch: the one balancer) and `stage_weights`, the packed weights one stage holds: its
layers, the embedding on the first stage and the final norm and LM head on the last (see
runtime/step.py for the empty placeholders the others keep). Knows nothing of processes or
scheduling.

Weights. A model with weights (a preset built with its seed, a checkpoint, a model object) is
built or loaded on the host whole, exactly as one process builds it, so every stage holds the
very tensors a one-process engine would and tokens can be compared; the stage keeps its
tensors, packs them there and moves only those to its device. A model on the meta device
(`build_model(name, device="meta")`: a shape, no weights) gets random weights generated on
the stage's device, seeded by (seed, stage): for benchmarks at real shapes, where building
Llama-3-70B on the host of every stage would take minutes and the host's memory; those
weights are not the ones `build_model(name, seed=seed)` makes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch

from pipedecode.models import ModelShape, model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles.schema import DeviceProfile
from pipedecode.runtime.weights import (ROPE_SOURCE, LayerWeights, PackedWeights, Packing,
                                        hf_sources, random_weights, rope_table)
from pipedecode.sim.layout import split_layers

REPRESENTATIVE_CONTEXT_TOKENS = 1024    # the context the stages are balanced for
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class StageSpec:
    """Stage `index` of `num_stages`: layers first_layer .. first_layer + num_layers - 1."""

    index: int
    num_stages: int
    first_layer: int
    num_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.num_stages or self.first_layer < 0 or self.num_layers < 1:
            raise ValueError(f"StageSpec: stage {self.index} of {self.num_stages} with layers "
                             f"from {self.first_layer} ({self.num_layers}) is not a stage")

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def describe(self) -> str:
        last = self.first_layer + self.num_layers - 1
        return f"stage {self.index} (layers {self.first_layer}-{last})"


def balanced_layers(shape: ModelShape, profile: DeviceProfile, num_stages: int,
                    max_num_seqs: int) -> tuple[int, ...]:
    """Layers per stage for a decode micro-batch of max_num_seqs / num_stages sequences at
    REPRESENTATIVE_CONTEXT_TOKENS each (the last stage also runs the head)."""
    cost = CostModel(shape, profile)
    tokens = max(1, math.ceil(max_num_seqs / num_stages))
    return split_layers(shape.num_layers, num_stages,
                        cost.sequential_layer_us(tokens, tokens * REPRESENTATIVE_CONTEXT_TOKENS),
                        cost.head_us(tokens))


def stage_specs(layers: tuple[int, ...]) -> tuple[StageSpec, ...]:
    starts = [sum(layers[:i]) for i in range(len(layers))]
    return tuple(StageSpec(i, len(layers), s, n) for i, (s, n) in enumerate(zip(starts, layers)))


def _empty(like: torch.Tensor) -> torch.Tensor:
    """A placeholder with no rows: what a stage keeps of a table it does not use."""
    return torch.empty(0, *like.shape[1:], dtype=like.dtype, device=like.device)


def _on(weights: PackedWeights, device: torch.device) -> PackedWeights:
    def move(t):
        return None if t is None else t.to(device)

    layers = tuple(LayerWeights(**{f.name: move(getattr(lw, f.name))
                                   for f in dataclasses.fields(LayerWeights)})
                   for lw in weights.layers)
    tensors = {name: move(getattr(weights, name))
               for name in ("embed", "final_norm", "lm_head", "rope_cos", "rope_sin")}
    return dataclasses.replace(weights, layers=layers, **tensors)


def _stage_sources(model: torch.nn.Module, spec: StageSpec) -> dict[str, torch.Tensor]:
    """The model's tensors a stage packs, its layers renumbered from 0, placeholders for the
    embedding (not the first stage) and the LM head (not the last)."""
    sources = hf_sources(model)
    out = {ROPE_SOURCE: sources[ROPE_SOURCE], "model.norm.weight": sources["model.norm.weight"]}
    for name, tensor in sources.items():
        found = _LAYER.fullmatch(name)
        if found and 0 <= int(found[1]) - spec.first_layer < spec.num_layers:
            out[f"model.layers.{int(found[1]) - spec.first_layer}.{found[2]}"] = tensor
    embed = sources["model.embed_tokens.weight"]
    lm_head = sources.get("lm_head.weight", embed)
    out["model.embed_tokens.weight"] = embed if spec.is_first else _empty(embed)
    out["lm_head.weight"] = lm_head if spec.is_last else _empty(lm_head)
    return out


def stage_weights(model: torch.nn.Module, spec: StageSpec, device: torch.device, *,
                  seed: int = 0) -> PackedWeights:
    """The packed weights of `spec`'s layers on `device` (module docstring)."""
    shape = dataclasses.replace(model_shape(model), num_layers=spec.num_layers)
    config = model.config
    positions = int(config.max_position_embeddings)
    if next(model.parameters()).device.type == "meta":
        return _random_stage(model, shape, spec, device, seed, positions)
    rotary = model.model.rotary_emb
    packing = Packing(_stage_sources(model, spec), shape, rms_eps=float(config.rms_norm_eps),
                      attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
                      max_positions=positions)
    return _on(packing.weights, device)


def _random_stage(model, shape: ModelShape, spec: StageSpec, device: torch.device, seed: int,
                  positions: int) -> PackedWeights:
    dtype = next(model.parameters()).dtype
    weights = random_weights(shape, max_positions=positions, device=device, dtype=dtype,
                             seed=seed * 1009 + spec.index)
    rotary = type(model.model.rotary_emb)(config=model.config)      # inv_freq on the host
    cos, sin = rope_table(rotary.inv_freq.to(device), positions,
                          float(getattr(rotary, "attention_scaling", 1.0)), dtype)
    return dataclasses.replace(
        weights, rope_cos=cos, rope_sin=sin, rms_eps=float(model.config.rms_norm_eps),
        embed=weights.embed if spec.is_first else _empty(weights.embed),
        lm_head=weights.lm_head if spec.is_last else _empty(weights.lm_head))
