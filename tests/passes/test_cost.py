"""FLOPs and bytes of single nodes against values computed by hand."""

import operator

import pytest
import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from pipedecode.models import build_model
from pipedecode.passes.capture import capture_decode
from pipedecode.passes.cost import kv_buffer_nodes, node_cost
from pipedecode.passes.report import module_path

# tiny-llama: hidden 64, 4 heads, 2 kv heads, head_dim 16, float32 (4 bytes).
B, CONTEXT, BUFFER = 2, 8, 32


@pytest.fixture(scope="module")
def decode_graph():
    torch._dynamo.reset()
    cap = capture_decode(build_model("tiny-llama"), batch_size=B, context_len=CONTEXT,
                         max_cache_len=BUFFER)
    return cap.gm


def _layer0(gm, module, role_filter):
    return [n for n in gm.graph.nodes if n.op != "placeholder" and
            module_path(n) == module and role_filter(n)]


def _cost(gm, node, context_len=CONTEXT):
    return node_cost(node, context_len=context_len, kv_buffers=kv_buffer_nodes(gm.graph))


def test_q_and_k_projection(decode_graph):
    q = _layer0(decode_graph, "self_attn.q_proj", lambda n: True)[0]
    k = _layer0(decode_graph, "self_attn.k_proj", lambda n: True)[0]
    # y[2, 64] = x[2, 64] @ w[64, 64]^T: 2*2*64*64 FLOPs; x, w, y once
    assert (_cost(decode_graph, q).flops, _cost(decode_graph, q).bytes_moved) == \
        (2 * 2 * 64 * 64, (2 * 64 + 64 * 64 + 2 * 64) * 4)
    assert (_cost(decode_graph, k).flops, _cost(decode_graph, k).bytes_moved) == \
        (2 * 2 * 32 * 64, (2 * 64 + 32 * 64 + 2 * 32) * 4)
    assert _cost(decode_graph, q).role == "linear"


def _attention(gm):
    return [n for n in gm.graph.nodes
            if n.target is torch.nn.functional.scaled_dot_product_attention][0]


def test_attention_counts_kv_at_live_context_not_buffer(decode_graph):
    attn = _attention(decode_graph)
    mask = attn.kwargs.get("attn_mask", attn.args[3] if len(attn.args) > 3 else None)
    mask_bytes_per_column = B * 1 * 1 * mask.meta["example_value"].element_size()
    # q [2, 4, 1, 16] against K, V [2, 2 kv heads, c, 16]: QK^T and PV are 2*b*h*q*c*d each
    for context in (CONTEXT, BUFFER):
        cost = _cost(decode_graph, attn, context_len=context)
        kv = 2 * B * 2 * context * 16 * 4
        q_and_out = 2 * B * 4 * 1 * 16 * 4
        assert cost.flops == 4 * B * 4 * 1 * context * 16
        assert cost.bytes_moved == kv + q_and_out + mask_bytes_per_column * context
    assert _cost(decode_graph, attn, context_len=None) == _cost(decode_graph, attn, BUFFER)


def test_kv_write_reads_and_writes_the_new_rows(decode_graph):
    write = [n for n in decode_graph.graph.nodes if n.target == "index_copy_"][0]
    cost = _cost(decode_graph, write)
    # rows [2, 2 kv heads, 1, 16] float32 read + written, cache_position int64 [1] read
    assert (cost.role, cost.flops, cost.bytes_moved) == ("kv_write", 0, 2 * (2 * 2 * 16 * 4) + 8)


def test_kv_views_are_free_and_norm_is_elementwise(decode_graph):
    roles = {_cost(decode_graph, n).role for n in decode_graph.graph.nodes if n.op != "placeholder"}
    assert {"linear", "attention", "kv_write", "kv_view", "layout", "elementwise",
            "embedding"} <= roles
    pow_node = _layer0(decode_graph, "input_layernorm", lambda n: n.target == "pow")[0]
    cost = _cost(decode_graph, pow_node)
    assert (cost.flops, cost.bytes_moved) == (2 * 64, 2 * (2 * 64 * 4))


def test_module_linear_with_bias_traced_by_fx():
    module = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=True), torch.nn.ReLU())
    gm = torch.fx.symbolic_trace(module)
    ShapeProp(gm).propagate(torch.randn(3, 8))
    linear = [n for n in gm.graph.nodes if n.op == "call_module"][0]
    cost = node_cost(linear, context_len=None, kv_buffers=set())
    # 2*3*4*8 multiply-adds + 3*4 bias adds; x[3,8], w[4,8], y[3,4], b[4]
    assert (cost.role, cost.flops, cost.bytes_moved) == ("linear", 204, (24 + 32 + 12 + 4) * 4)


def test_setitem_into_a_cache_buffer_is_a_kv_write():
    from pipedecode.passes.capture import dynamo_graph

    def write(cache, rows, index):
        cache[:, :, index] = rows
        return cache.sum()

    cache, rows = torch.zeros(2, 2, 8, 4), torch.randn(2, 2, 1, 4)
    gm, _ = dynamo_graph(write, cache, rows, torch.tensor([3]))
    buffers = kv_buffer_nodes(gm.graph)
    setitem = [n for n in gm.graph.nodes if n.target is operator.setitem][0]
    cost = node_cost(setitem, context_len=None, kv_buffers=buffers)
    # rows [2, 2, 1, 4] float32 read + written, index int64 [1] read
    assert (cost.role, cost.bytes_moved) == ("kv_write", 2 * 16 * 4 + 8)
