"""Packed weights: fused projections, shared tensors, and packings that follow their model."""

import gc
import weakref

import torch

from pipedecode.models import build_model, model_shape
from pipedecode.runtime.engine import build_executor
from pipedecode.runtime.weights import hf_packing, hf_sources, pack_hf_model

from tests.runtime.static_steps import greedy_steps


def test_packing_fuses_projections_and_shares_the_rest():
    model = build_model("tiny-qwen2", seed=3)
    before = {name: p.clone() for name, p in model.named_parameters()}
    packed = pack_hf_model(model)
    layer, attn, mlp = packed.layers[1], model.model.layers[1].self_attn, model.model.layers[1].mlp
    q, k = attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0]
    assert torch.equal(layer.qkv[q:q + k], attn.k_proj.weight)
    assert torch.equal(layer.qkv_bias[:q], attn.q_proj.bias)
    assert torch.equal(layer.gate_up[mlp.gate_proj.weight.shape[0]:], mlp.up_proj.weight)
    # shared, not copied: the executor only reads weights
    assert layer.o_proj.data_ptr() == attn.o_proj.weight.data_ptr()
    assert layer.down.data_ptr() == mlp.down_proj.weight.data_ptr()
    assert packed.shape == model_shape("tiny-qwen2")
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 6)]
    greedy_steps(build_executor(packed, batch_size=2, max_context=16), prompts, 4)
    for name, p in model.named_parameters():          # running it changed no weight
        assert torch.equal(p, before[name]), name


def _new_state(model, seed):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=gen).mul_(0.05).add_(t)
            for name, t in model.state_dict().items()}


def _fused(model, layer):
    attn, mlp = model.model.layers[layer].self_attn, model.model.layers[layer].mlp
    return (torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))


def test_in_place_updates_are_repacked_in_place():
    model = build_model("tiny-qwen2", seed=1)
    packing = hf_packing(model)
    weights = packing.current()
    qkv_ptr = weights.layers[1].qkv.data_ptr()
    model.load_state_dict(_new_state(model, seed=2))
    assert packing.current() is weights                  # same tensors: executors stay valid
    qkv, gate_up = _fused(model, 1)
    assert weights.layers[1].qkv.data_ptr() == qkv_ptr
    assert torch.equal(weights.layers[1].qkv, qkv)
    assert torch.equal(weights.layers[1].gate_up, gate_up)
    bias = model.model.layers[1].self_attn.q_proj.bias
    assert torch.equal(weights.layers[1].qkv_bias[:bias.shape[0]], bias)
    assert torch.equal(weights.layers[0].down, model.model.layers[0].mlp.down_proj.weight)


def test_a_rebuilt_packing_sees_in_place_updates():
    """The same model updated in place, then packed again while the first packing is held."""
    model = build_model("tiny-llama", seed=1)
    first = pack_hf_model(model)
    before = first.layers[0].qkv.clone()
    model.load_state_dict(_new_state(model, seed=3))
    again = pack_hf_model(model)
    assert not torch.equal(before, _fused(model, 0)[0])
    assert torch.equal(again.layers[0].qkv, _fused(model, 0)[0])


def test_replaced_parameters_and_moved_storage_pack_anew():
    model = build_model("tiny-llama", seed=1)
    packing = hf_packing(model)
    weights = packing.current()
    up = model.model.layers[1].mlp.up_proj
    up.weight = torch.nn.Parameter(torch.randn_like(up.weight))
    fresh = packing.current(packing.sources_of(hf_sources(model)))
    assert fresh is not weights and torch.equal(fresh.layers[1].gate_up, _fused(model, 1)[1])
    down = model.model.layers[0].mlp.down_proj.weight
    down.data = down.data.clone() * 2                     # same Parameter, new storage
    moved = packing.current(packing.sources_of(hf_sources(model)))
    assert moved is not fresh and torch.equal(moved.layers[0].down, down)


def test_refresh_sees_writes_the_version_counters_miss():
    model = build_model("tiny-llama", seed=1)
    packing = hf_packing(model)
    q = model.model.layers[0].self_attn.q_proj.weight
    q.data.mul_(3)                                        # through .data: no version bump
    assert not torch.equal(packing.current().layers[0].qkv, _fused(model, 0)[0])
    assert torch.equal(packing.refresh().layers[0].qkv, _fused(model, 0)[0])


def test_packings_are_shared_while_used_and_never_kept():
    model = build_model("tiny-llama", seed=1)
    first = hf_packing(model)
    assert hf_packing(model) is first                     # one copy of the fused projections
    other = build_model("tiny-llama", seed=1)             # equal values, other tensors
    assert hf_packing(other) is not first
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None                                 # nothing global holds a packing
