"""Helpers of the engine tests: tiny float32 models of each family, ragged prompts, HF greedy,
and `make_llm`, an LLM over the reference runner or pipedecode's paged runner."""

from __future__ import annotations

import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.sequence import Sequence
from pipedecode.models import build_model

FAMILIES = ("tiny-llama", "tiny-qwen2", "tiny-mistral")
EOS = 2
GREEDY = SamplingParams(max_tokens=10, temperature=0)

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


PROMPTS = ragged_prompts(8, 2, 12, seed=3)
_EXPECTED: dict[str, list[list[int]]] = {}


def expected(family: str) -> list[list[int]]:
    """transformers' greedy tokens for PROMPTS (10 tokens, EOS 2 as the generation config says)."""
    if family not in _EXPECTED:
        _EXPECTED[family] = [hf_greedy(tiny_model(family), p, 10, eos=[2]) for p in PROMPTS]
    return _EXPECTED[family]


def split_planner(num_micro_batches: int):
    """A planner that splits every bucket into interleaved micro-batches (48 memory SMs), as
    the paged runner's `planner=` takes it: rows dealt round-robin."""
    from pipedecode.runtime.program import manual_schedule

    def plan(shape, profile, context_lens):
        groups = [list(range(j, len(context_lens), num_micro_batches))
                  for j in range(num_micro_batches)]
        return manual_schedule(shape, context_lens, groups, 48, profile.sm_count - 48)

    return plan


def make_llm(model, *, runner: str = "reference", num_blocks: int = 64, micro_batches: int = 1,
             block_size: int = 4, runner_cls=None, max_model_len=None, runner_options=None,
             **options):
    """An LLM on the h100 profile over `runner`: "reference" (ReferenceRunner, or `runner_cls`,
    with num_blocks blocks, micro_batches per decode step, max_model_len positions) or
    "paged" (PagedModelRunner, or `runner_cls`, with `runner_options`; its pool num_blocks
    blocks of a float32 model, decode steps split into micro_batches by `split_planner`)."""
    from pipedecode.engine.llm import LLM

    if runner == "reference":
        from tests.engine.reference_runner import ReferenceRunner

        factory = (runner_cls or ReferenceRunner).factory(
            num_blocks=num_blocks, micro_batches=micro_batches, max_model_len=max_model_len)
    elif runner == "paged":
        from pipedecode.models import model_shape
        from pipedecode.runtime.kv_cache import PagedKVCache
        from pipedecode.runtime.model_runner import PagedModelRunner

        per_block = PagedKVCache.bytes_per_block(model_shape(model), block_size, torch.float32)
        options.setdefault("kv_cache_memory", num_blocks * per_block)
        factory = (runner_cls or PagedModelRunner).factory(
            planner=split_planner(micro_batches) if micro_batches > 1 else None,
            **(runner_options or {}))
    else:
        raise ValueError(f"runner must be 'reference' or 'paged', got {runner!r}")
    return LLM(model, device="h100", runner=factory, block_size=block_size, **options)


def eos_case_of():
    """tiny-llama whose EOS is a token its greedy output produces mid-way for PROMPTS[0];
    request 1 also stops at a token of its own, request 2 ignores EOS. With the
    transformers outputs for each (EOS, and request 1's stop token, as its eos_token_id)."""
    model = build_model("tiny-llama", dtype=torch.float32, seed=0)
    eos = hf_greedy(model, PROMPTS[0], 10)[3]
    model.generation_config.eos_token_id = eos
    stop = next(t for t in hf_greedy(model, PROMPTS[1], 10)[2:] if t != eos)
    params = [GREEDY] * len(PROMPTS)
    params[1] = SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[stop])
    params[2] = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    stops = [[eos]] * len(PROMPTS)
    stops[1], stops[2] = [eos, stop], None
    want = [hf_greedy(model, p, 10, eos=e) for p, e in zip(PROMPTS, stops)]
    return model, eos, stop, params, want


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
