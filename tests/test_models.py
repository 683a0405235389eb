import pytest
import torch

from pipedecode.errors import UnsupportedModelError
from pipedecode.models import PRESETS, ModelShape, build_model, check_model, make_config, model_shape


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_give_consistent_shapes(preset):
    shape = model_shape(preset)
    assert shape.num_heads % shape.num_kv_heads == 0
    qkv = shape.linears()[0]
    assert qkv.n == (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    assert ModelShape.from_dict(shape.to_dict()) == shape


def test_real_shapes_match_published_sizes():
    llama3 = model_shape("llama-3-8b")
    assert (llama3.num_heads, llama3.num_kv_heads, llama3.intermediate_size) == (32, 8, 14336)
    # Llama-3-8B: 128 KiB of bf16 KV cache per token (32 layers x 8 heads x 128 x 2 x 2 bytes).
    assert llama3.kv_bytes_per_token() == 131072
    assert model_shape("qwen2.5-7b").qkv_bias and not llama3.qkv_bias


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mistral", "tiny-qwen2"])
def test_build_model_is_seeded_and_supported(preset):
    a, b = build_model(preset, seed=3), build_model(preset, seed=3)
    check_model(a)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, build_model(preset, seed=4).lm_head.weight)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM"):
        make_config(GPT2Config())
    with pytest.raises(UnsupportedModelError, match="Presets"):
        make_config("not-a-model")


def test_decoder_without_lm_head_is_rejected():
    model = build_model("tiny-llama")
    with pytest.raises(UnsupportedModelError, match="LM head"):
        check_model(model.model)
    with pytest.raises(UnsupportedModelError):
        check_model(torch.nn.Linear(2, 2))


def test_bad_attention_implementation_is_rejected():
    with pytest.raises(UnsupportedModelError, match="not supported"):
        build_model("tiny-llama", attn_implementation="flash_attention_2")


def test_local_directory_loads_config_and_weights(tmp_path):
    from pipedecode.models import load_model

    original = build_model("tiny-qwen2", seed=7)
    original.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    assert torch.equal(loaded.model.layers[1].self_attn.q_proj.bias,
                       original.model.layers[1].self_attn.q_proj.bias)
    shape = model_shape(str(tmp_path))
    assert (shape.hidden_size, shape.num_kv_heads, shape.qkv_bias) == (64, 2, True)


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match="could not load a config"):
        model_shape(str(tmp_path))
