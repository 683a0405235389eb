"""Batched varlen prefill into a paged cache against transformers (float32, CPU), then paged
decode steps against transformers' greedy tokens."""

import math

import pytest
import torch

from pipedecode.models import build_model
from pipedecode.runtime.kv_cache import PagedKVCache, packed_positions, slot_ids
from pipedecode.runtime.ops import kernel_set
from pipedecode.runtime.prefill import prefill
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.weights import pack_hf_model

PRESETS = ["tiny-llama", "tiny-qwen2", "tiny-llama-mha"]


def _prompts(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen) for n in lengths]


def _tables(seqs, max_blocks, num_blocks, seed):
    """Shuffled, disjoint block tables that never use block 0 (the null block)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_blocks - 1, generator=gen)[:seqs * max_blocks] + 1
    return order.view(seqs, max_blocks).to(torch.int32)


def _pack(prompts, tables, block_size):
    tokens = torch.cat(prompts)
    cu = torch.tensor([0] + torch.tensor([p.numel() for p in prompts]).cumsum(0).tolist(),
                      dtype=torch.int32)
    seq_ids, positions = packed_positions(cu)
    return tokens, cu, slot_ids(tables, seq_ids, positions, block_size)


def _hf(model, prompt):
    with torch.no_grad():
        return model(prompt[None], use_cache=True)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_varlen_prefill_equals_transformers_per_prompt(preset, kernels):
    """Logits of each prompt's last token, and every layer's K (after RoPE) and V at the
    prompt's slots, as transformers' forward on that prompt alone gives them."""
    model = build_model(preset, attn_implementation="eager", seed=1)
    weights = pack_hf_model(model)
    prompts = _prompts([5, 17, 1, 33], seed=len(preset))
    cache = PagedKVCache.for_weights(weights, num_blocks=20, block_size=16)
    tables = _tables(4, 3, 20, seed=2)
    tokens, cu, slots = _pack(prompts, tables, 16)
    logits = prefill(weights, cache, kernel_set(kernels), tokens, cu, slots)
    assert logits.shape == (4, weights.shape.vocab_size)
    tol = 1e-5 if kernels == "torch" else 1e-4
    flat = lambda t: t.transpose(1, 2).reshape(-1, *t.shape[1:2], t.shape[3])  # noqa: E731
    for i, prompt in enumerate(prompts):
        out = _hf(model, prompt)
        torch.testing.assert_close(logits[i], out.logits[0, -1], rtol=tol, atol=tol)
        rows = slots[cu[i]:cu[i + 1]]
        for layer in range(weights.shape.num_layers):
            hf = out.past_key_values.layers[layer]
            torch.testing.assert_close(flat(cache.k[layer])[rows], hf.keys[0].transpose(0, 1),
                                       rtol=tol, atol=tol)
            torch.testing.assert_close(flat(cache.v[layer])[rows], hf.values[0].transpose(0, 1),
                                       rtol=tol, atol=tol)


def test_logits_rows_picks_any_token():
    model = build_model("tiny-llama", attn_implementation="eager", seed=3)
    weights = pack_hf_model(model)
    prompts = _prompts([6, 9], seed=4)
    cache = PagedKVCache.for_weights(weights, num_blocks=6, block_size=8)
    tokens, cu, slots = _pack(prompts, _tables(2, 2, 6, seed=5), 8)
    logits = prefill(weights, cache, kernel_set("torch"), tokens, cu, slots,
                     logits_rows=torch.arange(15))
    expected = torch.cat([_hf(model, p).logits[0] for p in prompts])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def _hf_greedy(model, prompt, new_tokens):
    out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, prompt.numel():].tolist()


@pytest.mark.parametrize("preset,block_size", [("tiny-llama", 8), ("tiny-qwen2", 16),
                                               ("tiny-llama-mha", 4)])
def test_paged_prefill_then_decode_is_transformers_greedy(preset, block_size):
    """One batched prefill, then paged decode steps with a padded row on the null block; each
    request's table is extended by a fresh block as it crosses a block boundary."""
    model = build_model(preset, attn_implementation="eager", seed=6)
    weights = pack_hf_model(model)
    prompts, new_tokens = _prompts([7, 3, 12], seed=7), 6
    max_context = 24
    max_blocks = math.ceil(max_context / block_size)
    cache = PagedKVCache.for_weights(weights, num_blocks=1 + 3 * max_blocks, block_size=block_size)
    tables = _tables(3, max_blocks, cache.num_blocks, seed=8)
    tokens, cu, slots = _pack(prompts, tables, block_size)
    first = prefill(weights, cache, kernel_set("torch"), tokens, cu, slots).argmax(-1)
    step = DecodeStep(weights, 4, max_context, paged=cache)     # row 3: padding
    lens = torch.tensor([p.numel() + 1 for p in prompts] + [1], dtype=torch.int32)
    live = torch.zeros(4, max_blocks, dtype=torch.int32)       # only the blocks in use so far
    generated, current = [first], torch.cat([first, torch.zeros(1, dtype=torch.long)])
    for _ in range(new_tokens - 1):
        for b in range(3):
            used = math.ceil(int(lens[b]) / block_size)
            live[b, :used] = tables[b, :used]
        step.set_inputs(current, lens, block_tables=live)
        current = step.run_sequential().argmax(-1)
        generated.append(current[:3].clone())
        lens[:3] += 1
    tokens_out = torch.stack(generated, 1)
    for i, prompt in enumerate(prompts):
        assert tokens_out[i].tolist() == _hf_greedy(model, prompt, new_tokens)


def test_bad_inputs_are_named():
    weights = pack_hf_model(build_model("tiny-llama", seed=9))
    cache = PagedKVCache.for_weights(weights, num_blocks=2, block_size=4)
    ks, tokens = kernel_set("torch"), torch.arange(6)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="rise strictly"):
        prefill(weights, cache, ks, tokens, torch.tensor([0, 0, 6], dtype=torch.int32),
                torch.arange(6))
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        prefill(weights, cache, ks, tokens, cu.long(), torch.arange(6))
    with pytest.raises(ValueError, match=r"slots must be in \[0, 8\)"):
        prefill(weights, cache, ks, tokens, cu, torch.arange(6) + 3)
    with pytest.raises(ValueError, match="slot_mapping"):
        prefill(weights, cache, ks, tokens, cu, torch.arange(5))


def test_a_pipeline_stage_prefills_from_the_residual_stream_it_is_given():
    """Stage weights (pipedecode.distributed): the first returns the residual stream, the
    second takes it and returns the whole model's logits."""
    from pipedecode.distributed.layout import stage_specs, stage_weights

    model = build_model("tiny-llama", dtype=torch.float32, seed=0)
    whole = pack_hf_model(model)
    first, second = (stage_weights(model, s, torch.device("cpu")) for s in stage_specs((1, 1)))
    kernels = kernel_set("torch", torch.device("cpu"))
    ids = torch.tensor([5, 9, 11, 3, 7])
    bounds = torch.tensor([0, 2, 5], dtype=torch.int32)
    slots = torch.arange(5)
    caches = [PagedKVCache.for_weights(w, 4, 4) for w in (whole, first, second)]
    want = prefill(whole, caches[0], kernels, ids, bounds, slots)
    hidden = prefill(first, caches[1], kernels, ids, bounds, slots)
    assert hidden.shape == (5, 64) and hidden.dtype == torch.float32
    with pytest.raises(ValueError, match="give `hidden` exactly when"):
        prefill(second, caches[2], kernels, ids, bounds, slots)
    with pytest.raises(ValueError, match=r"hidden must be float32 \[5, 64\]"):
        prefill(second, caches[2], kernels, ids, bounds, slots, hidden=hidden[:4])
    got = prefill(second, caches[2], kernels, ids, bounds, slots, hidden=hidden)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(caches[2].k[0], caches[0].k[1])       # its layer is the model's second
