"""pipedecode.compile: generation through the stages equals the original, bad input is clear."""

import pytest
import torch
import transformers

import pipedecode
from pipedecode.errors import PipedecodeError, UnsupportedModelError
from pipedecode.models import build_model


def _prompts(batch, length, seed, left_pad=()):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 256, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(left_pad):
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


def _generate(model, ids, mask, new_tokens=5):
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=0, output_logits=True, return_dict_in_generate=True)


def _query_len(staged):
    input_ids = next(n for n in staged.original.graph.nodes if n.op == "placeholder")
    return input_ids.meta["example_value"].shape[1]


def _assert_same_generation(model, compiled, ids, mask):
    expected, got = _generate(model, ids, mask), _generate(compiled, ids, mask)
    assert torch.equal(got.sequences, expected.sequences)
    for e, g in zip(expected.logits, got.logits):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset,batch,length,left_pad", [
    ("tiny-llama", 1, 4, ()),
    ("tiny-llama", 3, 1, ()),
    ("tiny-llama", 64, 3, ()),
    ("tiny-mistral", 3, 7, (3, 0, 1)),
    ("tiny-qwen2", 4, 6, (0, 5, 2, 0)),
])
def test_compiled_generate_matches_eager(preset, batch, length, left_pad, low_ridge):
    model = build_model(preset)
    compiled = pipedecode.compile(model, device=low_ridge)
    ids, mask = _prompts(batch, length, seed=batch * 10 + length, left_pad=left_pad)
    _assert_same_generation(model, compiled, ids, mask)
    # prefill and decode both went through the stages; the decode step has one query token
    decode = [s for s in compiled.pipedecode_stages if _query_len(s) == 1]
    assert len(compiled.pipedecode_stages) >= 2 and decode
    # fp32 q_proj intensity 2*b*64*64 / (4*(128*b + 4096)) crosses 1 FLOP/B between b=2 and 3
    expected_layer = ["compute", "memory", "compute"] if batch >= 3 else ["memory"]
    assert [s.bound for s in decode[-1].layer_stages(0)] == expected_layer


def test_several_prompt_lengths_through_one_compiled_model():
    model = build_model("tiny-llama")
    compiled = pipedecode.compile(model, device="h100")
    for length in (2, 5, 9):
        ids, mask = _prompts(2, length, seed=length, left_pad=(length // 2, 0))
        _assert_same_generation(model, compiled, ids, mask)


def test_original_model_is_untouched():
    model = build_model("tiny-llama")
    before = model.generation_config.cache_implementation
    compiled = pipedecode.compile(model)
    assert "forward" not in vars(model) and "forward" in vars(compiled)
    assert model.generation_config.cache_implementation == before
    assert compiled.generation_config.cache_implementation == "static"
    assert compiled.lm_head.weight is model.lm_head.weight


def test_unsupported_models_get_clear_errors():
    model = build_model("tiny-llama")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    for bad, message in ((gpt2, "Llama-family"), (model.model, "LM head"),
                         (torch.nn.Linear(4, 4), "Llama-family")):
        with pytest.raises(UnsupportedModelError, match=message):
            pipedecode.compile(bad)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="attention implementation"):
        pipedecode.compile(model)


def test_unknown_device_and_bad_context_are_clear_errors():
    model = build_model("tiny-llama")
    with pytest.raises(PipedecodeError, match="no-such-gpu"):
        pipedecode.compile(model, device="no-such-gpu")
    with pytest.raises(PipedecodeError, match="context_len"):
        pipedecode.compile(model, context_len=0)
