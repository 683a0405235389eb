"""Splitting classified graphs into stages; running the stages equals running the graph."""

import pytest
import torch

from pipedecode.models import build_model
from pipedecode.passes.capture import capture_decode, capture_prefill
from pipedecode.passes.classify import classify
from pipedecode.passes.partition import partition

FAMILIES = ("tiny-llama", "tiny-mistral", "tiny-qwen2")


def _staged(cap, device, context=None):
    classify(cap.gm, device, context_len=context)
    return partition(cap.gm)


@pytest.mark.parametrize("preset", FAMILIES)
def test_large_batch_layers_split_into_three_stages(preset, low_ridge):
    cap = capture_decode(build_model(preset), batch_size=64, context_len=8)
    staged = _staged(cap, low_ridge, 8)
    for layer in range(2):
        assert [s.bound for s in staged.layer_stages(layer)] == ["compute", "memory", "compute"]
    assert staged.stages[0].segment == "prologue" and staged.stages[-1].segment == "epilogue"
    assert [s.index for s in staged.stages] == list(range(len(staged.stages)))


def test_small_batch_layers_collapse_to_one_stage(low_ridge):
    cap = capture_decode(build_model("tiny-llama"), batch_size=1, context_len=8)
    staged = _staged(cap, low_ridge, 8)
    assert [[s.bound for s in staged.layer_stages(i)] for i in range(2)] == [["memory"]] * 2


def test_stages_cover_every_node_once_in_graph_order(low_ridge):
    cap = capture_decode(build_model("tiny-llama"), batch_size=64, context_len=8)
    staged = _staged(cap, low_ridge, 8)
    calls = [n.name for n in cap.gm.graph.nodes
             if n.op in ("call_function", "call_method", "call_module")]
    assert [name for s in staged.stages for name in s.node_names] == calls
    # the KV write and the attention that reads the written cache share a stage
    memory = staged.layer_stages(0)[1]
    assert any(n.startswith("index_copy_") for n in memory.node_names)
    assert any(n.startswith("attn_output") for n in memory.node_names)


def _fresh_inputs(example_inputs, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    fresh = []
    for i, x in enumerate(example_inputs):
        if x.is_floating_point():           # weights, norms, KV cache contents
            fresh.append(0.2 * torch.randn(x.shape, generator=gen, dtype=x.dtype))
        elif i == 0:                        # input_ids
            fresh.append(torch.randint(0, vocab, x.shape, generator=gen))
        else:
            fresh.append(x.clone())
    return fresh


@pytest.mark.parametrize("preset,batch,phase", [("tiny-llama", 64, "decode"),
                                                ("tiny-mistral", 3, "decode"),
                                                ("tiny-qwen2", 64, "decode"),
                                                ("tiny-qwen2", 2, "prefill")])
def test_running_stages_in_order_equals_the_graph(preset, batch, phase, low_ridge):
    model = build_model(preset)
    if phase == "decode":
        cap = capture_decode(model, batch_size=batch, context_len=6, max_cache_len=12)
    else:
        cap = capture_prefill(model, batch_size=batch, prompt_len=5, max_cache_len=12)
    staged = _staged(cap, low_ridge)
    assert len(staged.stages) > 2
    for seed in (1, 2):
        inputs = _fresh_inputs(cap.example_inputs, model.config.vocab_size, seed)
        ref_inputs = [x.clone() for x in inputs]
        expected = cap.gm(*ref_inputs)
        got = staged(*inputs)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
        for e, g in zip(ref_inputs, inputs):        # the in-place KV writes happened too
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_partition_needs_classification():
    cap = capture_decode(build_model("tiny-llama"), batch_size=1, context_len=4)
    with pytest.raises(ValueError, match="classify"):
        partition(cap.gm)


def test_mechanism_follows_hand_written_classes():
    """partition() only reads node.meta: hand-set classes give exactly those stages."""
    from pipedecode.passes.classify import META_KEY, NodeClass

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                 torch.nn.Tanh(), torch.nn.Linear(8, 4))
    gm = torch.fx.symbolic_trace(module)
    bounds = {"0": "compute", "1": "compute", "2": "memory", "3": "memory", "4": "compute"}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            node.meta[META_KEY] = NodeClass("elementwise", "layer.0", 0, 1, 1, "memory",
                                            bounds[node.target])
    staged = partition(gm)
    assert [(s.bound, s.node_names) for s in staged.stages] == [
        ("compute", ("_0", "_1")), ("memory", ("_2", "_3")), ("compute", ("_4",))]
    x = torch.randn(5, 8)
    torch.testing.assert_close(staged(x), module(x), rtol=0, atol=0)
