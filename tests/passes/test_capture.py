"""Capture of decode and prefill steps through TorchDynamo, and the errors for bad input."""

import pytest
import torch
import transformers

from pipedecode.errors import PipedecodeError, UnsupportedModelError
from pipedecode.models import build_model
from pipedecode.passes.capture import capture_decode, capture_prefill, meta_model

FAMILIES = ("tiny-llama", "tiny-mistral", "tiny-qwen2")


def _placeholders(gm):
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


@pytest.mark.parametrize("preset", FAMILIES)
def test_decode_graph_has_kv_cache_inputs_and_both_layers(preset):
    model = build_model(preset)
    cap = capture_decode(model, batch_size=3, context_len=6, max_cache_len=10)
    names = [n.name for n in _placeholders(cap.gm)]
    keys = [n for n in names if "past_key_values" in n and n.endswith("_keys")]
    values = [n for n in names if "past_key_values" in n and n.endswith("_values")]
    assert len(keys) == len(values) == model.config.num_hidden_layers
    by_name = dict(zip(names, cap.example_inputs))
    # [batch, kv_heads, static buffer, head_dim]
    assert tuple(by_name[keys[0]].shape) == (3, 2, 10, 16)
    writes = [n for n in cap.gm.graph.nodes if n.op == "call_method" and n.target == "index_copy_"]
    assert len(writes) == 2 * model.config.num_hidden_layers
    attn = [n for n in cap.gm.graph.nodes
            if n.target is torch.nn.functional.scaled_dot_product_attention]
    assert len(attn) == model.config.num_hidden_layers
    assert (cap.phase, cap.query_len, cap.context_len) == ("decode", 1, 6)


def test_qwen2_graph_keeps_qkv_bias():
    cap = capture_decode(build_model("tiny-qwen2"), batch_size=1, context_len=4)
    linears = [n for n in cap.gm.graph.nodes if n.target is torch._C._nn.linear]
    with_bias = [n for n in linears if len(n.args) > 2 and n.args[2] is not None]
    assert len(with_bias) == 3 * 2      # q, k, v in each of 2 layers


def test_prefill_graph_takes_prompt_tokens():
    cap = capture_prefill(build_model("tiny-llama"), batch_size=2, prompt_len=5, max_cache_len=8)
    assert tuple(cap.example_inputs[0].shape) == (2, 5)
    logits = [n for n in cap.gm.graph.nodes if n.name == "logits"][0]
    assert tuple(logits.meta["example_value"].shape) == (2, 5, 256)


def test_meta_model_captures_real_shapes_without_weights():
    model = meta_model("llama-2-7b")
    assert next(model.parameters()).device.type == "meta"
    assert model.config.hidden_size == 4096


@pytest.mark.parametrize("batch,context", [(0, 8), (2, 0), (-1, 4)])
def test_zero_batch_or_context_is_a_clear_error(batch, context):
    with pytest.raises(PipedecodeError, match="positive"):
        capture_decode(build_model("tiny-llama"), batch_size=batch, context_len=context)


def test_context_longer_than_buffer_is_a_clear_error():
    with pytest.raises(PipedecodeError, match="max_cache_len"):
        capture_decode(build_model("tiny-llama"), batch_size=1, context_len=9, max_cache_len=8)


def test_not_a_decoder_is_rejected():
    model = build_model("tiny-llama")
    for bad in (model.model, torch.nn.Linear(4, 4)):
        with pytest.raises(UnsupportedModelError):
            capture_decode(bad, batch_size=1, context_len=4)


def test_unsupported_architecture_is_rejected():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(UnsupportedModelError, match="Llama-family"):
        capture_decode(gpt2, batch_size=1, context_len=4)


def test_unsupported_attention_is_rejected():
    model = build_model("tiny-llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="flash_attention_2"):
        capture_decode(model, batch_size=1, context_len=4)
