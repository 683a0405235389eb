"""End to end on the CPU: LLM + scheduler + sampler over the reference runner, against
transformers' own generate, per request, in float32."""

import pytest
import torch

from pipedecode.engine.llm import LLM, GenerationError, RequestError
from pipedecode.engine.params import SamplingParams
from pipedecode.errors import PipedecodeError
from pipedecode.models import build_model
from tests.engine.helpers import (FAMILIES, GREEDY, PROMPTS, eos_case_of, expected, make_llm,
                                  tiny_model)
from tests.engine.reference_runner import ReferenceRunner


CONFIGS = {
    # name: (LLM options, whether the tiny pool must force preemption)
    "prefill-first": (dict(policy="prefill-first"), True),
    "temporal": (dict(policy="temporal"), False),
    "temporal-underpredicting": (dict(policy="temporal", predictor=lambda ids: 1), True),
    "temporal-few-seats": (dict(policy="temporal", max_num_seqs=3, max_num_batched_tokens=8),
                           False),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("config", CONFIGS)
def test_greedy_equals_transformers_per_request(family, config):
    options, preempts = CONFIGS[config]
    llm = make_llm(tiny_model(family), num_blocks=12, micro_batches=2, **options)  # 44 tokens
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected(family)
    assert [list(o.prompt_token_ids) for o in outputs] == PROMPTS
    assert all(o.finished and o.outputs[0].finish_reason in ("stop", "length") for o in outputs)
    if preempts:
        assert llm.last_stats.preemptions > 0
    decodes = [c for c in llm.runner.calls if c[0] == "decode"]
    assert any(len(mb) == 2 for _, _, mb in decodes)     # interleaving-shaped batches ran


def test_a_roomy_pool_never_preempts_and_batches_widely():
    llm = make_llm(tiny_model(), num_blocks=200, policy="prefill-first")
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected("tiny-llama")
    assert llm.last_stats.preemptions == 0
    assert llm.runner.calls[0] == ("prefill", tuple(range(8)), ())
    assert max(len(ids) for kind, ids, _ in llm.runner.calls if kind == "decode") == 8


@pytest.fixture(scope="module")
def eos_case():
    return eos_case_of()


@pytest.mark.parametrize("policy", ["prefill-first", "temporal"])
def test_eos_and_stop_ids_end_requests_mid_batch(eos_case, policy):
    model, eos, stop, params, want = eos_case
    llm = make_llm(model, num_blocks=14, policy=policy)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == want
    first = outputs[0].outputs[0]
    assert len(first.token_ids) == 4 and first.finish_reason == "stop" and first.stop_reason is None
    second = outputs[1].outputs[0]
    assert second.finish_reason == "stop" and second.token_ids[-1] in (stop, eos)
    assert second.stop_reason == (stop if second.token_ids[-1] == stop else None)
    third = outputs[2].outputs[0]
    assert third.finish_reason == "length" and len(third.token_ids) == 10


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    model = tiny_model()
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=11,
                            ignore_eos=True)
    alone = make_llm(model).generate([PROMPTS[4]], seeded, use_tqdm=False)[0]
    others = [SamplingParams(max_tokens=8, temperature=1.3), GREEDY]   # lengths predicted
    crowd = PROMPTS[1:6]
    params = [others[i % 2] for i in range(len(crowd))]
    params[3] = seeded
    for policy in ("prefill-first", "temporal"):
        llm = make_llm(model, num_blocks=12, micro_batches=2, policy=policy,
                       predictor=lambda ids: 1)
        out = llm.generate(crowd, params, use_tqdm=False)[3]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        assert llm.last_stats.preemptions > 0
    other_seed = SamplingParams(max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=12,
                                ignore_eos=True)
    assert make_llm(model).generate([PROMPTS[4]], other_seed, use_tqdm=False)[0] \
        .outputs[0].token_ids != alone.outputs[0].token_ids


def test_more_requests_than_seats_queue_and_come_back_in_order():
    llm = make_llm(tiny_model(), max_num_seqs=2, policy="prefill-first")
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected("tiny-llama")
    assert max(len(ids) for _, ids, _ in llm.runner.calls) <= 2
    assert [o.request_id for o in outputs] == sorted((o.request_id for o in outputs), key=int)


def test_stats_and_timing():
    llm = make_llm(tiny_model(), num_blocks=12, policy="prefill-first")
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    stats = llm.last_stats
    assert stats.requests == 8 and stats.prompt_tokens == sum(map(len, PROMPTS))
    assert stats.output_tokens == sum(len(o.outputs[0].token_ids) for o in outputs)
    assert stats.decode_tokens + 8 + stats.preemptions >= stats.output_tokens
    assert stats.preemptions == sum(o.metrics.preemptions for o in outputs) > 0
    assert stats.prefill_tokens > stats.prompt_tokens          # recomputed tokens count
    assert 0 < stats.peak_kv_blocks <= stats.kv_blocks == 11
    kinds = [kind for kind, _, _ in llm.runner.calls]
    assert (stats.prefill_batches, stats.decode_steps) == \
        (kinds.count("prefill"), kinds.count("decode")) and stats.prefill_batches > 1
    for o in outputs:
        m = o.metrics
        assert m.arrival_time_s <= m.first_token_time_s <= m.finish_time_s
    assert "preemptions" in stats.summary() and "peak KV" in stats.summary()


def test_a_preset_name_builds_the_same_random_model():
    by_name = make_llm("tiny-llama", seed=0).generate(PROMPTS[:3], GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in by_name] == expected("tiny-llama")[:3]


def test_one_prompt_alone_and_tensor_prompts():
    llm = make_llm(tiny_model())
    one = llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    as_tensor = llm.generate([torch.tensor(PROMPTS[0])], GREEDY, use_tqdm=False)
    as_dict = llm.generate({"prompt_token_ids": PROMPTS[0]}, {"max_tokens": 10, "temperature": 0},
                           use_tqdm=False)
    assert len(one) == 1 and one[0].outputs == as_tensor[0].outputs == as_dict[0].outputs
    assert list(one[0].outputs[0].token_ids) == expected("tiny-llama")[0]


# ---- bad input and failures ---------------------------------------------------------------
@pytest.mark.parametrize("prompts, params, match", [
    ([[5, 6], [], [7]], None, "request 1: the prompt is empty"),
    ([[5, 6]] * 3 + [[4] * 40], None, "request 3: the prompt of 40 tokens leaves no room for "
                                      "output within the model's 32 positions"),
    ([[5, 6], [4] * 30], None, r"request 1: .* in the KV cache \(7 blocks of 4 tokens\)"),
    ([[5, 6], [5, 300]], None, r"request 1: token ids \[300\] are outside the vocabulary"),
    ([[5, 6], [5, 7]], [{"max_tokens": 3}, {"max_tokens": 0}],
     "request 1: SamplingParams.max_tokens must be a positive integer, got 0"),
    ([[5, 6], [5, 7]], [{}, {"max_token": 3}], r"request 1: unknown sampling field\(s\)"),
    ([[5, 6], "hello"], None, "request 1: a text prompt needs a tokenizer, and the model was "
                              "given as an object"),
    ([[5, 6]], SamplingParams(stop="x"), "request 0: stop strings need a tokenizer"),
    ([[5, 6], 3.5], None, "request 1: a prompt must be a string or a list of token ids"),
])
def test_bad_requests_are_named_and_nothing_runs(prompts, params, match):
    llm = make_llm(tiny_model(), num_blocks=8, max_model_len=32)     # 28 tokens of cache
    with pytest.raises(RequestError, match=match) as info:
        llm.generate(prompts, params, use_tqdm=False)
    assert info.value.index == int(match.split(":")[0].split()[-1])
    assert llm.runner.calls == []


def test_shared_params_and_counts_must_match():
    llm = make_llm(tiny_model())
    with pytest.raises(ValueError, match="2 sampling params for 3 prompts"):
        llm.generate(PROMPTS[:3], [GREEDY, GREEDY], use_tqdm=False)
    with pytest.raises(ValueError, match="SamplingParams.max_tokens"):
        llm.generate(PROMPTS[:3], {"max_tokens": -1}, use_tqdm=False)
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        make_llm(tiny_model(), policy="fifo")
    assert llm.generate([], GREEDY, use_tqdm=False) == []


class FailingRunner(ReferenceRunner):
    """Raises at its 12th decode step, like a device error part-way through."""

    fail = True

    def decode(self, seqs, micro_batches):
        if self.fail and sum(kind == "decode" for kind, _, _ in self.calls) == 11:
            raise RuntimeError("device lost")
        return super().decode(seqs, micro_batches)


def test_a_failure_part_way_keeps_the_finished_outputs():
    llm = make_llm(tiny_model(), runner_cls=FailingRunner, max_num_seqs=3,
                   policy="prefill-first")
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (2, 3, 10, 10, 10, 10, 10, 10)]
    with pytest.raises(GenerationError, match="device lost") as info:
        llm.generate(PROMPTS, params, use_tqdm=False)
    outputs = info.value.outputs
    assert len(outputs) == 8
    done = [o for o in outputs if o.finished]
    failed = [o for o in outputs if not o.finished]
    assert done and failed and len(done) + len(failed) == 8
    for i, o in enumerate(outputs):
        if o.finished:        # exactly what a clean run gives
            assert list(o.outputs[0].token_ids) == expected("tiny-llama")[i][:params[i].max_tokens]
        else:
            assert o.outputs[0].finish_reason == "error" and "device lost" in o.outputs[0].error
    # the engine is usable afterwards: every block came back
    llm.runner.fail = False
    again = llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in again] == expected("tiny-llama")[:2]


def test_without_the_paged_runner_the_error_says_what_to_pass(monkeypatch):
    from pipedecode.engine import runner

    monkeypatch.setattr(runner, "PAGED_RUNNER", "pipedecode.runtime.no_such_runner")
    with pytest.raises(PipedecodeError, match=r"no_such_runner\) is not in this build; pass "
                                              r"LLM\(\.\.\., runner=factory\)"):
        LLM(tiny_model(), device="h100")


def test_a_runner_missing_the_protocol_is_refused():
    with pytest.raises(TypeError, match="lacks"):
        LLM(tiny_model(), device="h100", runner=lambda model, config: object())


@pytest.mark.parametrize("size, options, match", [
    (0, {}, "pipeline_parallel_size must be a positive integer, got 0"),
    (True, {}, "pipeline_parallel_size must be a positive integer"),
    (2, {"runner": ReferenceRunner.factory(num_blocks=8)}, "runner= and pipeline_parallel_size"),
    (2, {}, "needs one process per stage started by torchrun"),
])
def test_a_pipeline_that_cannot_start_says_why_before_the_model_loads(monkeypatch, size,
                                                                     options, match):
    from pipedecode.engine import llm as engine

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(engine, "load_model_and_tokenizer",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=match):
        LLM("tiny-llama", device="h100", pipeline_parallel_size=size, **options)
