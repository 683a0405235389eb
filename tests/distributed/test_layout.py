"""Stage layouts: the simulator's balancer priced by the cost model, contiguous stage specs, and
each stage's weights: the very tensors of the one-process packing for its layers, placeholders
for the tables it does not use, random weights generated per stage for a meta model."""

import dataclasses

import pytest
import torch

from pipedecode.distributed.layout import (REPRESENTATIVE_CONTEXT_TOKENS, StageSpec,
                                           balanced_layers, stage_specs, stage_weights)
from pipedecode.models import build_model, model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles.registry import resolve_profile
from pipedecode.runtime.weights import pack_hf_model
from pipedecode.sim.layout import split_layers

CPU = torch.device("cpu")


def test_balanced_layers_are_the_simulators_split():
    shape = model_shape("llama-3-8b")
    h100 = resolve_profile("h100")
    for stages in (2, 4, 8):
        layers = balanced_layers(shape, h100, stages, 256)
        assert sum(layers) == 32 and len(layers) == stages
        assert max(layers) - min(layers) <= 2          # the head shifts one boundary at most
    cost = CostModel(model_shape("llama-3-70b"), h100)      # 64 sequences per micro-batch
    assert balanced_layers(model_shape("llama-3-70b"), h100, 4, 256) == split_layers(
        80, 4, cost.sequential_layer_us(64, 64 * REPRESENTATIVE_CONTEXT_TOKENS),
        cost.head_us(64))
    with pytest.raises(ValueError, match="cannot fill"):
        balanced_layers(model_shape("tiny-llama"), h100, 3, 8)     # 2 layers


def test_stage_specs_are_contiguous():
    specs = stage_specs((3, 2, 3))
    assert [(s.first_layer, s.num_layers) for s in specs] == [(0, 3), (3, 2), (5, 3)]
    assert specs[0].is_first and specs[2].is_last and not specs[1].is_first
    assert specs[1].describe() == "stage 1 (layers 3-4)"
    with pytest.raises(ValueError, match="is not a stage"):
        StageSpec(3, 3, 0, 1)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2"])
def test_stage_weights_are_the_whole_packings_tensors(family):
    model = build_model(family, dtype=torch.float32, seed=0, num_hidden_layers=4)
    whole = pack_hf_model(model)
    specs = stage_specs((1, 2, 1))
    parts = [stage_weights(model, s, CPU) for s in specs]
    got = [lw for part in parts for lw in part.layers]
    assert len(got) == 4
    for mine, theirs in zip(got, whole.layers):
        for field in dataclasses.fields(mine):
            a, b = getattr(mine, field.name), getattr(theirs, field.name)
            assert (a is None and b is None) or torch.equal(a, b), field.name
    assert torch.equal(parts[0].embed, whole.embed) and parts[0].lm_head.shape == (0, 64)
    assert parts[1].embed.shape == (0, 64) and parts[1].lm_head.shape == (0, 64)
    assert torch.equal(parts[2].lm_head, whole.lm_head) and parts[2].embed.shape == (0, 64)
    for part in parts:
        assert part.shape.num_layers == len(part.layers)
        assert torch.equal(part.rope_cos, whole.rope_cos) and part.rms_eps == whole.rms_eps
    # the unfused tensors are shared with the model, not copied, on the host
    assert parts[1].layers[0].o_proj.data_ptr() == \
        model.model.layers[1].self_attn.o_proj.weight.data_ptr()


def test_a_meta_model_gets_random_weights_per_stage():
    model = build_model("llama-3-8b", dtype=torch.bfloat16, device="meta",
                        num_hidden_layers=4, hidden_size=256, intermediate_size=512,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                        vocab_size=1000)
    specs = stage_specs((2, 2))
    first, last = (stage_weights(model, s, CPU, seed=3) for s in specs)
    assert first.embed.shape == (1000, 256) and first.lm_head.shape[0] == 0
    assert last.embed.shape[0] == 0 and last.lm_head.shape == (1000, 256)
    assert first.dtype == torch.bfloat16 and first.device == CPU
    assert not torch.equal(first.layers[0].qkv, last.layers[0].qkv)     # seeded per stage
    again = stage_weights(model, specs[0], CPU, seed=3)
    assert torch.equal(first.layers[1].gate_up, again.layers[1].gate_up)
    assert 0.015 < first.layers[0].qkv.float().std().item() < 0.025
