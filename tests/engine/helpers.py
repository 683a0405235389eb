"""Helpers of the engine tests: tiny float32 models of each family, ragged prompts, HF greedy."""

from __future__ import annotations

import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.sequence import Sequence
from pipedecode.models import build_model

FAMILIES = ("tiny-llama", "tiny-qwen2", "tiny-mistral")
EOS = 2

_MODELS: dict[str, torch.nn.Module] = {}


def tiny_model(name: str = "tiny-llama") -> torch.nn.Module:
    """One random-weight float32 model per preset for the whole run (never mutated)."""
    if name not in _MODELS:
        _MODELS[name] = build_model(name, dtype=torch.float32, seed=0)
    return _MODELS[name]


def ragged_prompts(count: int, low: int, high: int, seed: int, vocab: int = 256) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(low, high + 1, (count,), generator=gen)
    return [torch.randint(3, vocab, (int(n),), generator=gen).tolist() for n in lens]


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos=None) -> list[int]:
    """transformers' own greedy generate for one prompt (no padding), stopping at `eos`."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=0,
                         eos_token_id=None if not eos else list(eos))
    return out[0, len(prompt):].tolist()


def make_seq(seq_id: int, prompt_len: int, **params) -> Sequence:
    return Sequence(seq_id, list(range(3, 3 + prompt_len)), SamplingParams(**params))


def drive(sched, lengths, max_steps=10_000) -> list[dict]:
    """Run to the end: sequence i emits EOS as its lengths[i]-th token, else token 7. One
    record per batch: kind, seq ids, requests running before it, blocks held once formed."""
    batches = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return batches
        running = len(sched.running)
        batch = sched.schedule()
        assert batch is not None, "the scheduler stalled"
        batches.append(dict(kind=batch.kind, ids=[s.seq_id for s in batch.seqs],
                            running=running, used=sched.block_manager.num_used_blocks))
        sched.postprocess(batch, [EOS if s.num_output_tokens + 1 >= lengths[s.seq_id] else 7
                                  for s in batch.seqs])
    raise AssertionError("no end in sight")
