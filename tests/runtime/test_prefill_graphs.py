"""Prefills from CUDA graphs: buckets, the padded static-input path against the eager prefill
(float32, CPU), and on a GPU the captured graphs against eager at Llama-3-8B's shapes."""

import numpy as np
import pytest
import torch

from pipedecode.models import build_model
from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.ops import kernel_set
from pipedecode.runtime.prefill import prefill
from pipedecode.runtime.prefill_graphs import (PAD_SLOT, PrefillBucket, PrefillGraphs,
                                               bucket_for, capturable)
from pipedecode.runtime.weights import pack_hf_model

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_smallest_bucket_holding_the_batch_or_none():
    assert bucket_for(1, 1) == PrefillBucket(128, 1)
    assert bucket_for(129, 3) == PrefillBucket(256, 4)
    assert bucket_for(1024, 64) == PrefillBucket(1024, 64)
    assert bucket_for(1025, 1) is None and bucket_for(100, 65) is None
    assert bucket_for(5, 2, token_buckets=(8,), prompt_buckets=(2,)) == PrefillBucket(8, 2)
    with pytest.raises(ValueError, match="at least 1 prompt and 1 token"):
        bucket_for(0, 1)


def _arrays(lengths, vocab, first_slot, seed):
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    ids = rng.integers(0, vocab, size=total, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    # every prompt in its own blocks, none in block 0 (the null block); shuffled within
    slots = first_slot + rng.permutation(total).astype(np.int64)
    return ids, starts, slots


def _eager(weights, cache, kernels, ids, starts, slots):
    dev = weights.device
    return prefill(weights, cache, kernels, torch.from_numpy(ids).to(dev),
                   torch.from_numpy(starts).to(dev), torch.from_numpy(slots).to(dev))


def _kv(cache, slots):
    block_size = cache.k[0].shape[2]
    b, o = torch.from_numpy(slots // block_size), torch.from_numpy(slots % block_size)
    return [(k[b.to(k.device), :, o.to(k.device)].clone(), v[b.to(v.device), :, o.to(v.device)]
             .clone()) for k, v in zip(cache.k, cache.v)]


@pytest.mark.parametrize("lengths", [[5], [17, 1, 33], [3] * 9, [60, 40, 27]])
def test_the_padded_path_equals_the_eager_prefill_on_the_cpu(lengths):
    weights = pack_hf_model(build_model("tiny-llama", attn_implementation="eager", seed=1))
    kernels = kernel_set("torch")
    cache = PagedKVCache.for_weights(weights, num_blocks=40, block_size=16)
    graphs = PrefillGraphs(weights, cache, kernels, capture=False, token_buckets=(16, 64, 128),
                           prompt_buckets=(1, 4, 16))
    ids, starts, slots = _arrays(lengths, weights.shape.vocab_size, 16, seed=len(lengths))
    want = _eager(weights, cache, kernels, ids, starts, slots)
    want_kv = _kv(cache, slots)
    for k, v in zip(cache.k, cache.v):
        k.zero_(), v.zero_()
    got = graphs.run(ids, starts, slots)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    for (k, v), (wk, wv) in zip(_kv(cache, slots), want_kv):
        assert torch.allclose(k, wk, atol=1e-6) and torch.allclose(v, wv, atol=1e-6)
    untouched = torch.ones(cache.k[0].shape[0], dtype=torch.bool)
    untouched[0] = False                                   # the padding's block
    untouched[torch.from_numpy(slots // 16)] = False
    assert all(float(k[untouched].abs().max()) == 0.0 for k in cache.k)
    assert graphs.replays == 1 and len(graphs.graphs) == 1
    assert graphs.capture_all() == 3 * 3 - 1                  # every bucket but the one run
    with pytest.raises(ValueError, match="slots must be in"):  # the eager prefill's checks
        graphs.run(ids, starts, slots + 40 * 16)
    assert graphs.describe()["buckets"][:3] == ["16x1", "16x4", "16x16"]


def test_a_batch_past_the_buckets_is_left_to_the_eager_prefill_and_bad_set_ups_refused():
    weights = pack_hf_model(build_model("tiny-llama", seed=1))
    cache = PagedKVCache.for_weights(weights, num_blocks=40, block_size=16)
    graphs = PrefillGraphs(weights, cache, kernel_set("torch"), capture=False,
                           token_buckets=(16,), prompt_buckets=(2,))
    ids, starts, slots = _arrays([10, 10], weights.shape.vocab_size, 16, seed=0)
    assert graphs.run(ids, starts, slots) is None and graphs.replays == 0
    ids, starts, slots = _arrays([2, 2, 2], weights.shape.vocab_size, 16, seed=0)
    assert graphs.run(ids, starts, slots) is None
    assert PAD_SLOT // 16 == 0
    with pytest.raises(ValueError, match="need a CUDA device"):
        PrefillGraphs(weights, cache, kernel_set("torch"))
    assert capturable(kernel_set("triton")) and capturable(kernel_set("hybrid"))
    assert not capturable(kernel_set("torch"))      # its prefill attention reads bounds back


@pytest.mark.gpu
@gpu
def test_gpu_prefill_graphs_equal_the_eager_prefill():
    """Llama-3-8B shapes (2 layers, float32: IEEE dots, so only cuBLAS's choice of GEMM for
    the padded batch moves the rounding): logits and K/V of graph replays against eager
    prefills of the same batches, 1 to 12 prompts, 5 to 1000 tokens; each bucket's graph
    captured once and replayed after; a batch past the buckets left to the eager path."""
    from pipedecode.engine.runner import RunnerConfig
    from pipedecode.profiles.registry import resolve_profile
    from pipedecode.runtime.model_runner import PagedModelRunner

    model = build_model("llama-3-8b", dtype=torch.float32, seed=0, num_hidden_layers=2).cuda()
    runner = PagedModelRunner(model, RunnerConfig(resolve_profile(None), max_num_seqs=16,
                                                  kv_cache_memory_bytes=1 << 30))
    graphs = runner.prefill_graphs
    assert graphs is not None and graphs.capture
    cases = [[5], [17, 1, 33], [100, 3, 60, 40], [600, 400], [5] * 12, [17, 1, 33]]
    for i, lengths in enumerate(cases):
        ids, starts, slots = _arrays(lengths, runner.shape.vocab_size, 16, seed=i)
        got = runner.run_prefill(ids, starts, slots).clone()
        got_kv = _kv(runner.cache, slots)
        want = _eager(runner.weights, runner.cache, runner.kernels, ids, starts, slots)
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-4, (lengths, rel)
        for (k, v), (wk, wv) in zip(got_kv, _kv(runner.cache, slots)):
            assert torch.allclose(k, wk, rtol=1e-4, atol=1e-4)
            assert torch.allclose(v, wv, rtol=1e-4, atol=1e-4)
    assert graphs.replays == len(cases) and len(graphs.graphs) == 5   # the repeat reused one
    assert all(g is not None for g, _ in graphs.graphs.values())
    ids, starts, slots = _arrays([700, 700], runner.shape.vocab_size, 16, seed=9)
    assert graphs.run(ids, starts, slots) is None
    before = [k.clone() for k in runner.cache.k]
    made = graphs.capture_all()
    assert made == 28 - 5 and len(runner.describe()["prefill_graphs"]["buckets"]) == 28
    for k, old in zip(runner.cache.k, before):                 # only the null block written
        assert torch.equal(k[1:], old[1:])
