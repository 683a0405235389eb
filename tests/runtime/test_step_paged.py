"""The paged DecodeStep against the static-cache one, alone and on the Executor."""

import math

import pytest
import torch

from pipedecode.models import build_model, model_shape
from pipedecode.runtime.executor import Executor, run_serial
from pipedecode.runtime.kv_cache import PagedKVCache, packed_positions, slot_ids
from pipedecode.runtime.ops import kernel_set
from pipedecode.runtime.prefill import prefill, prefill_request
from pipedecode.runtime.program import manual_schedule
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.weights import pack_hf_model, random_weights


class Pair:
    """The same requests prefilled into a static step (row by row) and a paged one (one
    batched prefill into shuffled blocks); `inputs()` gives each step's inputs of this step,
    the paged tables cut to the blocks in use (the rest of the buffer keeps stale ids)."""

    def __init__(self, weights, prompts, max_context, block_size, kernels, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.n, dev = len(prompts), weights.device
        self.block_size, self.max_blocks = block_size, math.ceil(max_context / block_size)
        self.static = DecodeStep(weights, self.n, max_context, kernels=kernels)
        first = torch.stack([prefill_request(self.static, r, p) for r, p in enumerate(prompts)])
        num_blocks = 1 + self.n * self.max_blocks + 3
        self.cache = PagedKVCache.for_weights(weights, num_blocks, block_size)
        self.paged = DecodeStep(weights, self.n, max_context, kernels=kernels, paged=self.cache)
        order = torch.randperm(num_blocks - 1, generator=gen)[:self.n * self.max_blocks] + 1
        self.tables = order.view(self.n, self.max_blocks).to(torch.int32).to(dev)
        cu = torch.tensor([0] + torch.tensor([p.numel() for p in prompts]).cumsum(0).tolist(),
                          dtype=torch.int32, device=dev)
        seq_ids, positions = packed_positions(cu)
        slots = slot_ids(self.tables, seq_ids, positions, block_size)
        paged_first = prefill(weights, self.cache, self.paged.kernels,
                              torch.cat(prompts).to(dev), cu, slots)
        self.first_logits = (first, paged_first)
        self.lens = torch.tensor([p.numel() + 1 for p in prompts], dtype=torch.int32, device=dev)

    def tables_in_use(self) -> torch.Tensor:
        used = math.ceil(int(self.lens.max()) / self.block_size)
        return self.tables[:, :used]


def _prompts(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen) for n in lengths]


@pytest.mark.parametrize("preset,kernels,block_size", [
    ("tiny-llama", "torch", 8), ("tiny-qwen2", "torch", 16), ("tiny-llama-mha", "torch", 8),
    ("tiny-qwen2", "triton", 16)])
def test_paged_step_logits_equal_the_static_step(preset, kernels, block_size):
    weights = pack_hf_model(build_model(preset, seed=1))
    pair = Pair(weights, _prompts([5, 14, 2], seed=2), 32, block_size, kernel_set(kernels))
    tol = 1e-5 if kernels == "torch" else 1e-4
    torch.testing.assert_close(pair.first_logits[1], pair.first_logits[0], rtol=tol, atol=tol)
    tokens = pair.first_logits[0].argmax(-1)
    for _ in range(5):                            # rows cross block boundaries on the way
        pair.static.set_inputs(tokens, pair.lens)
        pair.paged.set_inputs(tokens, pair.lens, block_tables=pair.tables_in_use())
        expected = pair.static.run_sequential()
        torch.testing.assert_close(pair.paged.run_sequential(), expected, rtol=tol, atol=tol)
        tokens = expected.argmax(-1)
        pair.lens += 1


@pytest.mark.parametrize("groups", [[[2, 0], [1, 3]], [[3], [0, 2], [1]]])
def test_executor_runs_a_paged_step_sequential_and_interleaved(groups):
    """Micro-batches are row ranges: their block-table rows go with them. The interleaved
    program, run in a valid serial order, gives the sequential logits row for row."""
    weights = pack_hf_model(build_model("tiny-llama", seed=3))
    prompts = _prompts([6, 11, 3, 9], seed=4)
    pair = Pair(weights, prompts, 40, 8, kernel_set("torch"), seed=5)
    seq = Executor(weights, 4, 40, step=pair.paged)
    lens = [p.numel() + 1 for p in prompts]
    inter = Executor(weights, 4, 40, step=pair.paged,
                     schedule=manual_schedule(model_shape("tiny-llama"), lens, groups, 48, 84))
    order = torch.tensor(inter.layout.order)
    tokens = pair.first_logits[1].argmax(-1)
    for _ in range(4):
        tables = pair.tables_in_use()
        seq.set_inputs(tokens, pair.lens, block_tables=tables)
        expected = seq.run().clone()
        inter.set_inputs(tokens[order], pair.lens[order], block_tables=tables[order])
        got = run_serial(inter.step, inter.program, inter.layout)
        torch.testing.assert_close(got, expected[order], rtol=1e-5, atol=1e-5)
        tokens = expected.argmax(-1)
        pair.lens += 1


def test_paged_step_checks_its_arguments():
    weights = pack_hf_model(build_model("tiny-llama", seed=6))
    cache = PagedKVCache.for_weights(weights, 9, 8)
    step = DecodeStep(weights, 2, 20, paged=cache)
    assert step.block_tables.shape == (2, 3) and step.block_tables.dtype == torch.int32
    assert step.k_cache[0] is cache.k[0]
    tokens, lens = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_tables is given exactly"):
        step.set_inputs(tokens, lens)
    with pytest.raises(ValueError, match=r"\[2, <= 3\]"):
        step.set_inputs(tokens, lens, block_tables=torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="block_tables is given exactly"):
        DecodeStep(weights, 2, 20).set_inputs(tokens, lens,
                                              block_tables=torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="neither caches nor left_padded"):
        DecodeStep(weights, 2, 20, paged=cache, left_padded=True)
    other = PagedKVCache(2, 9, 8, 4, 16, dtype=weights.dtype)          # MHA heads: wrong
    with pytest.raises(ValueError, match="paged cache must have"):
        DecodeStep(weights, 2, 20, paged=other)
    with pytest.raises(ValueError, match="static cache"):
        prefill_request(step, 0, torch.arange(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", ["tiny-llama", "llama-3-8b"])
def test_gpu_paged_graph_replays_for_new_tables(spec):
    """CUDA graphs captured once (sequential executor) replay with each step's tables: the
    paged step's logits follow the static step's, bf16, on tiny-llama and on two Llama-3-8B
    layers (random weights, 32/8 heads, block size 16, prompts up to 1000 tokens)."""
    if spec == "tiny-llama":
        weights = pack_hf_model(build_model(spec, seed=7, dtype=torch.bfloat16).cuda())
        lengths, max_context, block_size = [5, 30, 17, 9], 64, 16
    else:
        weights = random_weights(model_shape(spec), max_positions=1100, device="cuda",
                                 num_layers=2)
        lengths, max_context, block_size = [1000, 37, 512, 260, 5, 777], 1100, 16
    vocab = weights.shape.vocab_size
    gen = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
    pair = Pair(weights, prompts, max_context, block_size, None, seed=9)
    static = Executor(weights, len(prompts), max_context, step=pair.static)
    paged = Executor(weights, len(prompts), max_context, step=pair.paged)
    tokens = pair.first_logits[0].argmax(-1)
    for _ in range(20):                                   # crosses block boundaries
        static.set_inputs(tokens, pair.lens)
        paged.set_inputs(tokens, pair.lens, block_tables=pair.tables_in_use())
        expected = static.run().float()
        got = paged.run().float()
        assert (got - expected).norm() / expected.norm() < 2e-2
        tokens = expected.argmax(-1)
        pair.lens += 1
    assert static.captured and paged.captured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graphs", ["one", "per_partition"])
def test_gpu_paged_interleaved_graph_matches_sequential(graphs):
    """A paged step interleaved on two SM partitions (graphs replayed with new tables each
    step) follows the sequential paged step; each executor has its own cache."""
    weights = pack_hf_model(build_model("tiny-llama", seed=10, dtype=torch.bfloat16).cuda())
    prompts = _prompts([5, 9, 3, 7], seed=11)
    lens = [p.numel() + 1 for p in prompts]
    seq_pair = Pair(weights, prompts, 48, 16, None, seed=12)
    inter_pair = Pair(weights, prompts, 48, 16, None, seed=12)
    schedule = manual_schedule(model_shape("tiny-llama"), lens, [[0, 2], [1, 3]], 48, 84)
    seq = Executor(weights, 4, 48, step=seq_pair.paged)
    inter = Executor(weights, 4, 48, step=inter_pair.paged, schedule=schedule, graphs=graphs)
    assert inter.mode == "interleaved", inter.fallback_reason
    order = torch.tensor(inter.layout.order, device="cuda")
    tokens = seq_pair.first_logits[1].argmax(-1)
    for _ in range(12):
        tables = seq_pair.tables_in_use()
        seq.set_inputs(tokens, seq_pair.lens, block_tables=tables)
        expected = seq.run().float()
        inter.set_inputs(tokens[order], seq_pair.lens[order], block_tables=tables[order])
        got = inter.run().float()
        assert (got - expected[order]).norm() / expected.norm() < 2e-2
        tokens = expected.argmax(-1)
        seq_pair.lens += 1
