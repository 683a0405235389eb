"""Stage runners in one process, chained by hand: stage 0 prepares each micro-batch, every stage
runs it on the decoded wire metadata and the residual stream of the one before, and the last
stage's logits equal the whole model's paged runner exactly (float32 on the CPU), for prefill,
sequential decode steps and decode steps split into interleaved micro-batches; the last stage
samples as the engine's sampler does."""

import numpy as np
import pytest
import torch

from pipedecode.distributed import wire
from pipedecode.distributed.layout import stage_specs, stage_weights
from pipedecode.distributed.stage import StageRunner
from pipedecode.engine.params import SamplingParams
from pipedecode.engine.runner import RunnerConfig
from pipedecode.engine.sampler import Sampler
from pipedecode.engine.scheduler import ScheduledBatch, group_micro_batches
from pipedecode.engine.sequence import Sequence
from pipedecode.errors import PipedecodeError
from pipedecode.models import build_model, model_shape
from pipedecode.profiles.registry import resolve_profile
from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.model_runner import PagedModelRunner

from tests.engine.helpers import ragged_prompts, split_planner

CPU = torch.device("cpu")


def _config(model, blocks: int, interleave: bool = False) -> RunnerConfig:
    per_block = PagedKVCache.bytes_per_block(model_shape(model), 4, torch.float32)
    return RunnerConfig(resolve_profile("h100"), 4, blocks * per_block, 8, 64, interleave)


def _chain(model, layers, config, **options):
    return [StageRunner(model, config, s, stage_weights(model, s, CPU), **options)
            for s in stage_specs(layers)]


def _through(stages, batch):
    """The batch through every stage as the pipeline runs it: the last stage's output."""
    meta = stages[0].prepare(batch)
    received = wire.decode(*wire.encode(meta))
    out = stages[0].run(meta)
    for stage in stages[1:]:
        assert out.dtype == torch.float32 and out.shape[0] == meta.activation_rows
        out = stage.run(received, out)
    return meta, out


@pytest.mark.parametrize("family, layers", [("tiny-llama", (2, 1, 1)),
                                            ("tiny-qwen2", (1, 3)), ("tiny-llama", (1, 1, 1, 1))])
@pytest.mark.parametrize("micro", [1, 2])
def test_chained_stages_give_the_whole_models_logits(family, layers, micro):
    model = build_model(family, dtype=torch.float32, seed=0, num_hidden_layers=4)
    config = _config(model, 40, interleave=micro > 1)
    options = dict(planner=split_planner(micro)) if micro > 1 else {}
    full = PagedModelRunner(model, config, **options)
    stages = _chain(model, layers, config, **options)
    seqs = [Sequence(i, p, SamplingParams(temperature=0))
            for i, p in enumerate(ragged_prompts(6, 2, 9, seed=1))]
    start = 1
    for seq in seqs:                    # room for the prompt and 6 more tokens
        need = -(-(seq.num_tokens + 6) // 4)
        seq.block_table, start = list(range(start, start + need)), start + need
    batch = ScheduledBatch("prefill", tuple(seqs), (tuple(range(len(seqs))),), 1)
    want = full.prefill(seqs)
    _, got = _through(stages, batch)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for step in range(2, 7):
        for seq, token in zip(seqs, want.argmax(-1).tolist()):
            seq.append(token)
        groups = group_micro_batches(seqs, micro)
        order = [seqs[i] for g in groups for i in g]
        spans = np.cumsum([0] + [len(g) for g in groups])
        micro_batches = tuple(tuple(range(a, b)) for a, b in zip(spans[:-1], spans[1:]))
        batch = ScheduledBatch("decode", tuple(order), micro_batches, step)
        if micro > 1:
            full.num_micro_batches(len(order), sum(s.num_tokens for s in order))
            stages[0].num_micro_batches(len(order), sum(s.num_tokens for s in order))
        want = full.decode(order, micro_batches)
        meta, got = _through(stages, batch)
        assert (meta.key[0] == "interleaved") == (micro > 1)
        torch.testing.assert_close(got[torch.as_tensor(meta.rows)], want, rtol=0, atol=0)
        seqs = order


def test_stages_hold_only_their_layers_and_pool():
    model = build_model("tiny-llama", dtype=torch.float32, seed=0, num_hidden_layers=4)
    stages = _chain(model, (3, 1), _config(model, 20))
    first, last = (s.runner for s in stages)
    assert len(first.weights.layers) == first.cache.num_layers == 3
    assert len(last.weights.layers) == last.cache.num_layers == 1
    assert first.weights.embed.shape[0] == 256 and first.weights.lm_head.shape[0] == 0
    assert last.weights.embed.shape[0] == 0 and last.weights.lm_head.shape[0] == 256
    # kv_cache_memory is each stage's: the stage of 1 layer holds 4x the blocks
    assert first.num_blocks == 26 and last.num_blocks == 80
    agreed = StageRunner(model, _config(model, 20), stage_specs((3, 1))[1],
                         stage_weights(model, stage_specs((3, 1))[1], CPU),
                         num_blocks_of=lambda blocks: min(blocks, 26))
    assert agreed.num_blocks == 26 and "least of the pipeline" in agreed.runner.memory["sized_by"]
    with pytest.raises(PipedecodeError, match="micro-batches the controller sends"):
        stages[0].prefill([])
    with pytest.raises(ValueError, match="sliced from the model once"):
        first.sync_weights()


def test_the_last_stage_samples_as_the_engine_does():
    model = build_model("tiny-llama", dtype=torch.float32, seed=0, num_hidden_layers=2)
    stages = _chain(model, (1, 1), _config(model, 20))
    params = [SamplingParams(max_tokens=4, temperature=0.8, top_k=20, seed=5),
              SamplingParams(max_tokens=4, temperature=0)]
    seqs = [Sequence(i, p, params[i]) for i, p in enumerate(ragged_prompts(2, 3, 6, seed=2))]
    seqs[0].block_table, seqs[1].block_table = [1, 2], [3, 4]
    batch = ScheduledBatch("prefill", tuple(seqs), ((0, 1),), 1)
    meta, logits = _through(stages, batch)
    stages[1].begin({s.seq_id: s.params for s in seqs})
    assert stages[1].sample(meta, logits) == Sampler()(logits, seqs)
