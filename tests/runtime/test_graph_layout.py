"""Recognition of a decode graph: every input's role found by its use, never by Dynamo's names."""

import pytest
import torch
from transformers import StaticCache

from pipedecode.models import build_model
from pipedecode.runtime.graph_layout import DecodeGraph, is_prefill, recognize


def _decode_graph(preset="tiny-llama", **overrides):
    """(model, its StaticCache, the decode graph, its example inputs) after one decode step."""
    model = build_model(preset, seed=1, **overrides).eval()
    graphs = []

    def record(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    model.forward = torch.compile(model.forward, backend=record, dynamic=False)
    ids = torch.randint(3, 200, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    cache = StaticCache(config=model.config, max_cache_len=12)
    model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                   past_key_values=cache)
    decode = [(gm, ex) for gm, ex in graphs if not is_prefill(gm)]
    assert len(decode) == 1 and len(graphs) == 2
    return model, cache, *decode[0]


def _roles(layout: DecodeGraph, example):
    """Each role's tensor (by identity), as the layout places them in `example`."""
    roles = {role: example[getattr(layout, role)] for role in
             ("input_ids", "position_ids", "attention_mask", "inv_freq")}
    for what in ("keys", "values", "counters"):
        roles.update({(what, i): example[j] for i, j in enumerate(getattr(layout, what))})
    roles.update({name: example[i] for name, i in layout.params})
    return roles


@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-llama-mha"])
def test_every_input_is_the_tensor_its_role_names(preset):
    model, cache, gm, example = _decode_graph(preset)
    layout = recognize(gm, example)
    assert isinstance(layout, DecodeGraph), layout
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, i in layout.params:
        assert example[i] is tensors[name], name
    assert example[layout.inv_freq] is model.model.rotary_emb.inv_freq
    for i, layer in enumerate(cache.layers):
        assert example[layout.keys[i]] is layer.keys
        assert example[layout.values[i]] is layer.values
        assert example[layout.counters[i]] is layer.cumulative_length
    assert example[layout.input_ids].shape == example[layout.position_ids].shape == (2, 1)
    assert example[layout.attention_mask].shape == (2, 1, 1, 12)
    assert layout.shape.qkv_bias == (preset == "tiny-qwen2")
    assert layout.shape.num_kv_heads == model.config.num_key_value_heads
    assert layout.rms_eps == model.config.rms_norm_eps and layout.max_context == 12


@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")
def test_recognition_does_not_read_input_names_or_order():
    """The same graph with its inputs renamed to nothing telling and in reverse order: every
    role finds the same tensor."""
    _, _, gm, example = _decode_graph("tiny-qwen2")
    before = _roles(recognize(gm, example), example)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_call = next(n for n in gm.graph.nodes if n.op != "placeholder")
    for k, node in enumerate(reversed(inputs)):
        node.target = f"input_{k}"
        node._rename(f"input_{k}")
        first_call.prepend(node)
    gm.graph.lint()
    gm.recompile()
    shuffled = list(reversed(example))
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"][:2] == ["input_0",
                                                                              "input_1"]
    layout = recognize(gm, shuffled)
    assert isinstance(layout, DecodeGraph), layout
    after = _roles(layout, shuffled)
    assert after.keys() == before.keys()
    assert all(after[role] is before[role] for role in before)


@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")
@pytest.mark.parametrize("overrides,reason", [
    (dict(attn_implementation="eager"), "no scaled_dot_product_attention"),
    (dict(hidden_act="gelu"), "MLP is not SiLU(gate) * up"),
])
def test_a_decode_graph_it_cannot_run_is_refused_with_the_reason(overrides, reason):
    _, _, gm, example = _decode_graph(**overrides)
    why = recognize(gm, example)
    assert isinstance(why, str) and reason in why


def test_a_prompt_graph_is_prefill():
    model = build_model("tiny-llama").eval()
    graphs = []
    model.forward = torch.compile(model.forward, dynamic=False,
                                  backend=lambda gm, ex: graphs.append((gm, ex)) or gm.forward)
    ids = torch.randint(3, 200, (2, 5), generator=torch.Generator().manual_seed(2))
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                   do_sample=False, cache_implementation="static")
    assert [is_prefill(gm) for gm, _ in graphs] == [True, False]
    assert "(prefill)" in recognize(*graphs[0])
