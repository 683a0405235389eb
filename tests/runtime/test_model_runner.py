"""The paged model runner through LLM against transformers' own generate, per request, float32
on the CPU; its buckets, plans and staged inputs; and on a GPU, bf16 against float32, CUDA-graph
replay against eager, tiny models against transformers."""

import math

import numpy as np
import pytest
import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.runner import RunnerConfig
from pipedecode.errors import PipedecodeError
from pipedecode.models import build_model, model_shape
from pipedecode.profiles.analytic import BUILTIN
from pipedecode.runtime.model_runner import PagedModelRunner
from pipedecode.runtime.runner_inputs import BlockTables, StepInputs
from pipedecode.runtime.runner_plans import (REPLAN_FRACTION, BucketPlans, bucket_for,
                                             bucket_sizes, micro_batch_rows)

from tests.engine.helpers import (FAMILIES, GREEDY, PROMPTS, eos_case_of, expected, make_llm,
                                  make_seq, split_planner, tiny_model)

ALL_FAMILIES = FAMILIES + ("tiny-llama-mha",)
CONFIGS = {
    # name: (LLM options, micro-batches, whether the tiny pool must force preemption)
    "prefill-first": (dict(policy="prefill-first"), 2, True),
    "temporal": (dict(policy="temporal"), 2, False),
    "temporal-underpredicting": (dict(policy="temporal", predictor=lambda ids: 1), 1, True),
    "prefill-first-few-seats": (dict(policy="prefill-first", max_num_seqs=3), 2, False),
}


def _tokens(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("config", CONFIGS)
def test_paged_runner_equals_transformers_per_request(family, config):
    options, micro, preempts = CONFIGS[config]
    llm = make_llm(tiny_model(family), runner="paged", num_blocks=12, micro_batches=micro,
                   **options)                                   # 11 blocks of 4: 44 tokens
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _tokens(outputs) == expected(family)
    assert llm.runner.num_blocks == 12
    if preempts:
        assert llm.last_stats.preemptions > 0
    split = [k for k in llm.runner.executors if k[0] == "interleaved"]
    assert bool(split) == (micro == 2)          # two micro-batches ran where planned
    if split:
        assert all(k[1] == 2 and k[3] == 48 for k in split)


@pytest.mark.parametrize("policy", ["prefill-first", "temporal"])
def test_eos_and_stop_ids_end_requests_mid_batch(policy):
    model, eos, stop, params, want = eos_case_of()
    llm = make_llm(model, runner="paged", num_blocks=14, micro_batches=2, policy=policy)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert _tokens(outputs) == want
    assert outputs[0].outputs[0].finish_reason == "stop" and len(want[0]) == 4
    assert outputs[2].outputs[0].finish_reason == "length"


def test_buckets_pad_with_null_block_rows_and_stay_exact():
    """5 and then fewer running requests: steps of 8, 4, 2, 1 rows, the rest padding."""
    llm = make_llm(tiny_model(), runner="paged", num_blocks=64, policy="prefill-first")
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (2, 4, 6, 8, 9)]
    outputs = llm.generate(PROMPTS[:5], params, use_tqdm=False)
    from tests.engine.helpers import hf_greedy

    want = [hf_greedy(tiny_model(), p, sp.max_tokens) for p, sp in zip(PROMPTS, params)]
    assert _tokens(outputs) == want
    assert {k for k in llm.runner.executors} == {("sequential", r) for r in (8, 4, 2, 1)}
    plans = llm.runner.describe()["plans"]
    assert {k.split("/")[0] for k in plans} == {"8", "4", "2", "1"}
    assert all("one row" in p["plan_reason"] for k, p in plans.items() if k.startswith("1/"))


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    model = tiny_model()
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=11,
                            ignore_eos=True)
    alone = make_llm(model, runner="paged").generate([PROMPTS[4]], seeded, use_tqdm=False)[0]
    crowd = PROMPTS[1:6]
    params = [SamplingParams(max_tokens=8, temperature=1.3), GREEDY] * 3
    params[3] = seeded
    llm = make_llm(model, runner="paged", num_blocks=12, micro_batches=2, predictor=lambda i: 1)
    out = llm.generate(crowd, params[:5], use_tqdm=False)[3]
    assert out.outputs[0].token_ids == alone.outputs[0].token_ids
    assert llm.last_stats.preemptions > 0


def test_interleave_off_never_plans_and_says_so():
    llm = make_llm(tiny_model(), runner="paged", micro_batches=2, interleave=False)
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected("tiny-llama")
    info = llm.runner.describe()
    assert all(k.startswith("sequential") for k in info["executors"])
    assert all(p["plan_reason"] == "interleaving is off (interleave=False)"
               for p in info["plans"].values())


# ---- set-up -----------------------------------------------------------------------------
def _config(**options):
    return RunnerConfig(BUILTIN["h100"], **options)


def test_pool_size_from_memory_and_the_cpu_default():
    model = tiny_model()
    shape = model_shape(model)
    per_block = 2 * shape.num_layers * shape.num_kv_heads * 16 * shape.head_dim * 4   # float32
    runner = PagedModelRunner(model, _config(kv_cache_memory_bytes=10 * per_block + 5))
    assert runner.num_blocks == 10 and runner.memory["sized_by"] == "kv_cache_memory"
    assert runner.cache.k[0].shape == (10, shape.num_kv_heads, 16, shape.head_dim)
    default = PagedModelRunner(model, _config(max_num_seqs=4))
    max_len = model.config.max_position_embeddings
    assert default.memory["sized_by"] == "CPU default"
    assert default.num_blocks == 4 * max_len // 16 + 1 and default.max_model_len == max_len
    with pytest.raises(PipedecodeError, match="holds 1 blocks of 16 tokens; it needs at least 2"):
        PagedModelRunner(model, _config(kv_cache_memory_bytes=per_block + 1))


def test_weights_changed_in_place_are_followed_replaced_ones_are_reported():
    model = build_model("tiny-llama", dtype=torch.float32, seed=5)
    llm = make_llm(model, runner="paged")
    before = _tokens(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False))
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(-1.5)
    assert llm.runner.sync_weights()                   # repacked in place
    after = _tokens(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False))
    from tests.engine.helpers import hf_greedy

    assert after != before and after == [hf_greedy(model, p, 10, eos=[2]) for p in PROMPTS[:3]]
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
    assert not llm.runner.sync_weights()               # a new tensor: rebuild the runner


def test_one_runner_serves_llms_that_differ_in_interleave():
    from pipedecode.engine.llm import LLM

    model = tiny_model()
    first = make_llm(model, runner="paged", micro_batches=2)
    assert _tokens(first.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected("tiny-llama")
    runner = first.runner
    split = sum(n for k, n in runner.steps_by_executor.items() if k[0] == "interleaved")
    assert split > 0
    second = LLM(model, device="h100", block_size=4, interleave=False,
                 kv_cache_memory=runner.config.kv_cache_memory_bytes, runner=runner.reuse)
    assert second.runner is runner and not runner.plans.interleave
    assert _tokens(second.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected("tiny-llama")
    assert sum(n for k, n in runner.steps_by_executor.items() if k[0] == "interleaved") == split
    with pytest.raises(ValueError, match="only interleave may differ"):
        LLM(model, device="h100", block_size=8, runner=runner.reuse)
    with pytest.raises(ValueError, match="the model it was built for"):
        LLM(build_model("tiny-llama", dtype=torch.float32), device="h100", runner=runner.reuse)


# ---- buckets and plans ------------------------------------------------------------------
def test_bucket_sizes_and_lookup():
    assert bucket_sizes(3) == (1, 2, 3)
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 96, 100)
    sizes = bucket_sizes(700)
    assert sizes[5:8] == (32, 64, 96) and 512 in sizes and 576 in sizes and 544 not in sizes
    assert sizes[-2:] == (640, 700)
    assert [bucket_for(n, sizes) for n in (1, 3, 33, 512, 513, 699)] == [1, 4, 64, 512, 576, 700]
    assert micro_batch_rows(65, 2, sizes) == 64 and micro_batch_rows(66, 2, sizes) == 64
    assert micro_batch_rows(130, 2, sizes) == 96
    with pytest.raises(ValueError, match="buckets hold 1..700"):
        bucket_for(701, sizes)


class CountingPlanner:
    def __init__(self, result="split"):
        self.calls, self.result = [], result

    def __call__(self, shape, profile, lens):
        self.calls.append(list(lens))
        if self.result == "fail":
            raise ImportError("No module named 'pulp'")
        return split_planner(2)(shape, profile, lens)


def test_plans_are_kept_per_bucket_and_context_bin_and_reused():
    planner = CountingPlanner()
    plans = BucketPlans(model_shape("tiny-llama"), BUILTIN["h100"], bucket_sizes(64),
                        planner=planner)
    # bins of mean context 25% wide in ratio: [1.25^20, 1.25^21) = [86.7, 108.4) holds 100
    assert REPLAN_FRACTION == 0.25 and 1.25 ** 20 < 100 < 105 < 1.25 ** 21 < 130
    assert plans.micro_batches(30, 30 * 100) == 2                # bucket 32
    assert planner.calls == [[100] * 30 + [1] * 2]              # padded rows at context 1
    assert plans.micro_batches(31, 31 * 105) == 2 and len(planner.calls) == 1   # kept
    assert plans.micro_batches(32, 32 * 130) == 2                # another bin: planned
    assert len(planner.calls) == 2 and plans.plans[(32, 21)].mean_context_tokens == 130
    assert plans.micro_batches(29, 29 * 100) == 2 and len(planner.calls) == 2  # back: reused
    assert plans.last(30) is plans.plans[(32, 20)]
    assert plans.micro_batches(40, 40 * 130) == 2                # another bucket: 64
    assert len(planner.calls) == 3 and set(plans.plans) == {(32, 20), (32, 21), (64, 21)}
    # the executor of 2 x 16 rows on 48 memory SMs measured slower: 29..32 sequences are
    # sequential from now on, 40 (2 x 32 rows) still split
    plans.runs_sequential((2, 16, 48), "measured interleaved 10 us >= sequential 9 us")
    assert [plans.micro_batches(n, n * 130) for n in (29, 32, 40)] == [1, 1, 2]
    assert len(planner.calls) == 3


def test_a_missing_solver_is_sequential_with_its_reason():
    plans = BucketPlans(model_shape("tiny-llama"), BUILTIN["h100"], bucket_sizes(8),
                        planner=CountingPlanner("fail"))
    assert plans.micro_batches(5, 50) == 1
    assert "planning failed (ImportError: No module named 'pulp')" in plans.last(5).reason
    assert plans.micro_batches(1, 5) == 1 and "one row" in plans.last(1).reason


def test_a_batch_crossing_a_bin_edge_reuses_the_neighbouring_plan_within_the_fraction():
    planner = CountingPlanner()
    plans = BucketPlans(model_shape("tiny-llama"), BUILTIN["h100"], bucket_sizes(64),
                        planner=planner)
    edge = 1.25 ** 21                                           # 108.4: bins 20 | 21
    plans.micro_batches(32, 32 * 100)                           # planned in bin 20 at 100
    plans.micro_batches(32, 32 * 110)                           # bin 21, 110 / 100 < 1.25
    assert 100 < edge < 110 and len(planner.calls) == 1 and set(plans.plans) == {(32, 20)}
    assert plans.last(32).mean_context_tokens == 100
    plans.micro_batches(32, 32 * 126)                           # 126 / 100 > 1.25: planned
    assert len(planner.calls) == 2 and set(plans.plans) == {(32, 20), (32, 21)}
    plans.micro_batches(32, 32 * 96)                            # bin 20 again: its own plan
    assert plans.last(32).mean_context_tokens == 100 and len(planner.calls) == 2
    plans.micro_batches(40, 40 * 110)                           # another bucket: planned
    assert len(planner.calls) == 3 and (64, 21) in plans.plans
    # every plan sits in its own bin
    for (_, k), plan in plans.plans.items():
        assert int(math.log(plan.mean_context_tokens) / math.log1p(REPLAN_FRACTION)) == k
    # bin 20 left empty between plans at 85 (bin 19) and 110 (bin 21): the nearer serves
    planner = CountingPlanner()
    plans = BucketPlans(model_shape("tiny-llama"), BUILTIN["h100"], bucket_sizes(64),
                        planner=planner)
    plans.micro_batches(32, 32 * 85)
    plans.micro_batches(32, 32 * 110)                           # bin 19 is no neighbour of 21
    assert set(plans.plans) == {(32, 19), (32, 21)} and len(planner.calls) == 2
    for mean, served in ((95, 85), (100, 110), (106, 110)):    # all three in bin 20
        plans.micro_batches(32, 32 * mean)
        assert plans.last(32).mean_context_tokens == served, mean
    assert len(planner.calls) == 2


def test_the_default_planner_decides_small_buckets_without_its_ilp(monkeypatch):
    import pipedecode.planner.api as api
    from pipedecode.planner.cost import min_micro_batch_tokens

    solved = []
    real = api.solve_lp
    monkeypatch.setattr(api, "solve_lp", lambda *a, **k: solved.append(1) or real(*a, **k))
    profile = BUILTIN["h200"]
    fewest = min_micro_batch_tokens(profile)                    # 180 on the analytic H200
    sizes = bucket_sizes(1024)
    plans = BucketPlans(model_shape("llama-3-8b"), profile, sizes)
    below = [r for r in sizes if 1 < r < 2 * fewest]
    for rows in below:
        assert plans.micro_batches(rows, rows * 512) == 1
        assert f"fewer than {fewest}" in plans.last(rows).reason
        assert plans.last(rows).predicted_step_us == plans.last(rows).sequential_step_us
    assert not solved and plans.num_plans == len(below)
    above = next(r for r in sizes if r >= 2 * fewest)            # 384: the ILP splits it
    assert plans.micro_batches(above, above * 512) == 2 and len(solved) == 1


def test_a_coresident_answer_runs_sequentially_and_says_so():
    from types import SimpleNamespace

    def coresident(shape, profile, lens):    # the parts of a Schedule BucketPlans reads
        return SimpleNamespace(mode="coresident", micro_batches=(0, 1), memory_sms=132,
                               compute_sms=132, predicted_step_us=9.0, sequential_step_us=10.0,
                               mode_reason="coresident (attention within 64 KiB per SM): "
                                           "predicted 0.01 ms, sequential 0.01 ms")

    plans = BucketPlans(model_shape("tiny-llama"), BUILTIN["h200"], bucket_sizes(8),
                        planner=coresident)
    assert plans.micro_batches(5, 50) == 1
    reason = plans.last(5).reason
    assert reason.startswith("the planner chose coresident mode, which the paged runner does "
                             "not run (coresident (attention within 64 KiB")
    assert reason.endswith("); sequential")


# ---- staged inputs ----------------------------------------------------------------------
def test_block_tables_write_whole_then_only_what_grew():
    tables = BlockTables(capacity=3, max_blocks=4)
    a, b = make_seq(0, 5), make_seq(1, 2)
    a.block_table, b.block_table = [7, 3], [5]
    tables.make_room(2)
    assert tables.write(0, a.block_table) == 0 and tables.write(1, b.block_table) == 1
    a.block_table.append(9)
    rows, tokens, lens, most = tables.rows([b, a])
    assert rows == [1, 0] and most == 3 and lens == [2, 5] and tokens == [4, 7]
    assert tables.table[0, :3].tolist() == [7, 3, 9]
    a.block_table = [2, 4]                          # preempted and re-admitted: another table
    tables.rows([a])
    assert tables.table[0, :2].tolist() == [2, 4] and tables.known[0] == 2
    c, d = make_seq(2, 1), make_seq(3, 1)
    c.block_table, d.block_table = [6], [8]
    rows, *_ = tables.rows([c, a, d])                # 4 sequences, 3 rows: written whole again
    assert rows == [0, 1, 2] and tables.table[rows, 0].tolist() == [6, 2, 8]
    with pytest.raises(ValueError, match="5 blocks exceed the 4"):
        tables.write(4, [1, 2, 3, 4, 5])


def test_staged_rows_and_padding():
    inputs = StepInputs(max_rows=8, max_blocks=4, device=torch.device("cpu"), table_capacity=16)
    seqs = [make_seq(i, n) for i, n in enumerate((3, 6, 1))]
    for seq, table in zip(seqs, ([4], [5, 6], [9])):
        seq.block_table = table
    tokens, lens, tables = inputs.stage(seqs, 4, np.array([0, 2, 3]))
    assert tokens.tolist() == [seqs[0].token_ids[-1], 0, seqs[1].token_ids[-1],
                               seqs[2].token_ids[-1]]
    assert lens.tolist() == [3, 1, 6, 1] and tables.tolist() == [[4, 0], [0, 0], [5, 6], [9, 0]]
    tokens, lens, tables = inputs.stage(seqs[:1], 2)
    assert lens.tolist() == [3, 1] and tables.tolist() == [[4], [0]]


def test_staged_rows_load_into_another_stages_inputs():
    mine = StepInputs(max_rows=8, max_blocks=4, device=torch.device("cpu"), table_capacity=16)
    theirs = StepInputs(max_rows=8, max_blocks=4, device=torch.device("cpu"), table_capacity=4)
    seqs = [make_seq(i, n) for i, n in enumerate((3, 6))]
    seqs[0].block_table, seqs[1].block_table = [4], [5, 6]
    want = [t.tolist() for t in mine.stage(seqs, 4, np.array([0, 3]))]
    sent = mine.staged.copy()
    assert sent.shape == (4, 4) and sent[3].tolist() == [seqs[1].token_ids[-1], 6, 5, 6]
    assert [t.tolist() for t in theirs.load(sent)] == want
    with pytest.raises(ValueError, match="exceed the 8 x 6 this stage holds"):
        theirs.load(np.zeros((9, 3), dtype=np.int32))


# ---- on a GPU -----------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_gpu_tiny_models_in_float32_equal_transformers(family):
    model = build_model(family, dtype=torch.float32, seed=0).cuda()
    from tests.engine.helpers import hf_greedy

    want = [hf_greedy(model, p, 10, eos=[2]) for p in PROMPTS]
    llm = make_llm(model, runner="paged", num_blocks=12, policy="prefill-first")
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == want
    assert llm.last_stats.preemptions > 0
    assert all(ex.captured for ex in llm.runner.executors.values())


def _gpu_prompts(count, seed, low=20, high=200):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(low, high, (count,), generator=gen)
    return [torch.randint(0, 128000, (int(n),), generator=gen).tolist() for n in lens]


@pytest.mark.gpu
@gpu
def test_gpu_graph_replay_per_bucket_equals_eager():
    """The same requests on two runners, CUDA graphs against eager launches: every logits row
    of every bucket (8, 4, 2, 1 rows as requests finish) bitwise equal. The prefills run
    eagerly on both (their graphs pad the batch, which changes cuBLAS's GEMMs' rounding:
    test_prefill_graphs.py holds them to a tolerance)."""
    from pipedecode.engine.llm import LLM

    model = build_model("llama-3-8b", dtype=torch.bfloat16, seed=0, num_hidden_layers=2).cuda()
    prompts = _gpu_prompts(6, seed=1)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
              for n in (3, 9, 17, 33, 40, 41)]
    kept, keys = {}, None
    for graphs in (True, False):
        llm = LLM(model, policy="prefill-first", kv_cache_memory=1 << 30, interleave=False,
                  runner=PagedModelRunner.factory(use_graphs=graphs, keep_logits=True,
                                                  prefill_graphs=False))
        llm.generate(prompts, params, use_tqdm=False)
        kept[graphs] = llm.runner.kept_logits
        assert all(ex.captured == graphs for ex in llm.runner.executors.values())
        keys = set(llm.runner.executors)
        del llm
    assert keys == {("sequential", r) for r in (8, 4, 2, 1)}
    assert kept[True].keys() == kept[False].keys()
    assert len(kept[True]) == sum(p.max_tokens for p in params)
    for key in kept[True]:
        assert torch.equal(kept[True][key], kept[False][key]), key


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layers", [2, 4])
def test_gpu_bf16_logits_within_tolerance_of_float32(layers):
    """Llama-3-8B shapes with random weights and `layers` layers, 8 ragged prompts, 8 greedy
    tokens: the paged runner in bf16 and in float32 (the same weights, upcast) against
    transformers eager in float32 and in bf16, teacher-forced on the float32 run's tokens.
    The float32 runner is within 1e-3 of transformers float32 (relative: the norm of the
    difference over float32's). The bf16 runner's distance from float32, at every position
    where its tokens still equal the float32 run's, is within 1.5x of transformers' own bf16
    distance from float32 at the same positions (worst and median), and within 1.5x of it from
    transformers bf16: bf16 rounding of random 4096-wide weights moves logits by ~1e-1
    relative, so the reference's own error is the yardstick, not a fixed number."""
    import copy
    import statistics

    from pipedecode.engine.llm import LLM

    model32 = build_model("llama-3-8b", dtype=torch.float32, seed=0,
                          num_hidden_layers=layers).cuda()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    prompts, new = _gpu_prompts(8, seed=2), 8
    greedy = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    runs = {}
    for name, model in (("float32", model32), ("bf16", model16)):
        llm = LLM(model, policy="prefill-first", kv_cache_memory=2 << 30,
                  runner=PagedModelRunner.factory(keep_logits=True))
        outputs = llm.generate(prompts, greedy, use_tqdm=False)
        runs[name] = (_tokens(outputs), llm.runner.kept_logits)
        del llm
    (t32, l32), (t16, l16) = runs["float32"], runs["bf16"]

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    err = {"pd32-hf32": [], "pd16-pd32": [], "hf16-hf32": [], "pd16-hf16": []}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([prompt + t32[i][:-1]], device="cuda")
            hf = {name: m(ids).logits[0, len(prompt) - 1:].float().cpu()
                  for name, m in (("32", model32), ("16", model16))}
            parted = next((t for t in range(new) if t32[i][t] != t16[i][t]), new)
            for t in range(new):
                key = (i, len(prompt) + t)
                err["pd32-hf32"].append(rel(l32[key], hf["32"][t]))
                if t <= parted:                       # logits at t see equal tokens before t
                    err["pd16-pd32"].append(rel(l16[key], l32[key]))
                    err["hf16-hf32"].append(rel(hf["16"][t], hf["32"][t]))
                    err["pd16-hf16"].append(rel(l16[key], hf["16"][t]))
    summary = {k: (max(v), statistics.median(v)) for k, v in err.items()}
    print(f"{layers} layers, {len(err['pd16-pd32'])} positions compared; "
          + "; ".join(f"{k} worst {w:.2e} median {m:.2e}" for k, (w, m) in summary.items()))
    assert summary["pd32-hf32"][0] < 1e-3
    for k in ("pd16-pd32", "pd16-hf16"):
        for at in (0, 1):                             # worst, median
            assert summary[k][at] <= 1.5 * summary["hf16-hf32"][at], (k, summary)
