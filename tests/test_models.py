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


def test_bad_config_directory_is_one_line_naming_the_cause(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 100, "num_attention_heads": 3, '
        '"num_key_value_heads": 3, "intermediate_size": 200, "num_hidden_layers": 2, '
        '"vocab_size": 256}')
    with pytest.raises(UnsupportedModelError) as info:
        model_shape(str(tmp_path))
    assert "not a multiple of the number of attention heads" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_weights_are_checked_against_free_memory_before_building(monkeypatch):
    from pipedecode import models
    from pipedecode.errors import InsufficientMemoryError

    monkeypatch.setattr(models, "free_memory_bytes", lambda device: (20 << 30, "available RAM"))
    # Llama-3-8B in float32: 8.0e9 parameters (head untied) x 4 bytes = 29.9 GiB
    with pytest.raises(InsufficientMemoryError, match=r"29\.9 GiB needed on cpu, but only "
                                                      r"20\.0 GiB is available RAM"):
        build_model("llama-3-8b")
    assert build_model("tiny-llama") is not None        # 0.1 MB: fits


def test_free_memory_of_the_cpu_is_what_meminfo_says():
    from pipedecode.models import free_memory_bytes

    free, what = free_memory_bytes("cpu")
    assert 0 < free and ("MemAvailable" in what or "free RAM" in what)


def test_build_model_is_made_in_the_target_dtype_with_the_seeds_weights():
    a = build_model("tiny-llama", seed=3)
    b = build_model("tiny-llama", seed=3, dtype=torch.bfloat16)
    assert b.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(a.lm_head.weight.to(torch.bfloat16), b.lm_head.weight)
    meta = build_model("llama-3-70b", dtype=torch.bfloat16, device="meta")   # nothing allocated
    assert meta.lm_head.weight.is_meta


def test_directory_without_weights_is_refused_by_load_model(tmp_path):
    from pipedecode.models import load_model, weights_present

    make_config("tiny-llama").save_pretrained(tmp_path)
    assert not weights_present(str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="holds no weights"):
        load_model(str(tmp_path))


def test_max_positions_and_the_context_check(tmp_path):
    from pipedecode.errors import WorkloadError
    from pipedecode.models import check_positions, max_positions

    assert max_positions("llama-3-8b") == 8192 and max_positions("tiny-llama") == 512
    make_config("tiny-qwen2").save_pretrained(tmp_path)
    assert max_positions(str(tmp_path)) == 512
    assert max_positions(model_shape("tiny-llama")) is None      # a bare shape does not say
    check_positions("tiny-llama", 512)
    with pytest.raises(WorkloadError, match="513 positions, beyond the 512 of tiny-llama"):
        check_positions("tiny-llama", 513)


def test_weight_bytes_counts_linears_embedding_and_head():
    shape = model_shape("tiny-llama")
    linears = 64 * (64 + 2 * 32) + 64 * 64 + 2 * 160 * 64 + 64 * 160
    assert shape.weight_bytes() == 2 * (2 * linears + 2 * 256 * 64)
