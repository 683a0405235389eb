import torch

from pipedecode.models import build_model, model_shape
from pipedecode.runtime.engine import build_executor, generate
from pipedecode.runtime.weights import pack_hf_model


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
    generate(build_executor(packed, batch_size=2, max_context=16), prompts, 4)
    for name, p in model.named_parameters():          # running it changed no weight
        assert torch.equal(p, before[name]), name
