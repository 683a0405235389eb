"""The classification policy: roofline bounds and which stage each node joins."""

import pytest
import torch

from pipedecode.models import build_model
from pipedecode.passes.capture import capture_decode
from pipedecode.passes.classify import META_KEY, NodeClass, classify, roofline_bound
from pipedecode.passes.cost import OpCost
from pipedecode.passes.report import module_path
from pipedecode.profiles.schema import DeviceProfile


def test_roofline_compares_intensity_with_ridge():
    device = DeviceProfile("ridge-2", 132, 8, 8, peak_flops_per_s=2e12, hbm_bytes_per_s=1e12,
                           memory_bytes=1 << 30)
    assert roofline_bound(OpCost("linear", 200, 100), device) == "compute"
    assert roofline_bound(OpCost("linear", 199, 100), device) == "memory"
    assert roofline_bound(OpCost("elementwise", 0, 64), device) == "memory"


def _classified(preset, batch, device, context=8):
    cap = capture_decode(build_model(preset), batch_size=batch, context_len=context)
    classify(cap.gm, device, context_len=context)
    return [n for n in cap.gm.graph.nodes if META_KEY in n.meta]


def _stage_bound_by_module(nodes, layer=0):
    out = {}
    for node in nodes:
        info = node.meta[META_KEY]
        if info.layer == layer:
            out.setdefault(module_path(node) or "layer", set()).add(info.stage_bound)
    return out


def test_large_batch_layer_reads_compute_memory_compute(low_ridge):
    nodes = _classified("tiny-llama", 64, low_ridge)
    by_module = _stage_bound_by_module(nodes)
    for module in ("input_layernorm", "self_attn.q_proj", "self_attn.o_proj",
                   "post_attention_layernorm", "mlp.gate_proj", "mlp.down_proj"):
        assert by_module[module] == {"compute"}, module
    rope = [n for n in nodes if n.name in ("q_embed", "k_embed")]
    assert [n.meta[META_KEY].stage_bound for n in rope] == ["compute", "compute"]
    memory = {n.meta[META_KEY].role for n in nodes
              if n.meta[META_KEY].layer == 0 and n.meta[META_KEY].stage_bound == "memory"}
    assert {"kv_write", "attention"} <= memory and "linear" not in memory


def test_small_batch_layer_is_all_memory(low_ridge):
    nodes = _classified("tiny-llama", 1, low_ridge)
    layer_bounds = {n.meta[META_KEY].stage_bound for n in nodes
                    if n.meta[META_KEY].layer is not None}
    assert layer_bounds == {"memory"}
    linears = [n.meta[META_KEY] for n in nodes if n.meta[META_KEY].role == "linear"]
    assert all(c.bound == "memory" and c.intensity_flops_per_byte < 1.0 for c in linears)


def test_anchors_keep_their_bound_and_cheap_ops_are_memory_bound(low_ridge):
    nodes = _classified("tiny-qwen2", 64, low_ridge)
    for node in nodes:
        info: NodeClass = node.meta[META_KEY]
        if info.role in ("linear", "attention", "kv_write", "embedding"):
            assert info.stage_bound == info.bound
        elif info.role == "elementwise":
            assert info.bound == "memory"
    segments = [n.meta[META_KEY].segment for n in nodes]
    assert segments[0] == "prologue" and segments[-1] == "epilogue"
    assert [n.meta[META_KEY].role for n in nodes if n.name == "logits"] == ["linear"]


def test_classify_rejects_bad_arguments(low_ridge):
    cap = capture_decode(build_model("tiny-llama"), batch_size=1, context_len=4)
    with pytest.raises(TypeError, match="DeviceProfile"):
        classify(cap.gm, "h100")
    with pytest.raises(ValueError, match="context_len"):
        classify(cap.gm, low_ridge, context_len=0)
