import pytest

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.policies import make_policy
from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
from pipedecode.engine.sequence import Sequence
from pipedecode.engine.params import SamplingParams
from pipedecode.models import model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.planner.switch import prefill_batches, switch_intensity
from pipedecode.profiles import load_profile
from pipedecode.sim.engine_costs import EngineCosts
from pipedecode.sim.executors import MemoCostModel, StagePipeline
from pipedecode.sim.layout import pipeline_layout
from pipedecode.sim.links import LINKS
from pipedecode.sim.loop import (SchedulingConfig, VirtualClock, build_scheduler, queue_through,
                                 run)
from pipedecode.sim.workloads import fixed, sharegpt_shaped, uniform

from tests.sim.helpers import PerSequenceStages

H200 = load_profile("h200")
M8B = model_shape("llama-3-8b")
COST = CostModel(M8B, H200)
MEMO = MemoCostModel(M8B, H200)        # the same prices, remembered: what the simulator uses


def _sim(workload, executor, config, num_blocks=4000, block_size=16, max_model_len=4096):
    clock = VirtualClock()
    sched, seqs = build_scheduler(workload, MEMO, num_blocks, block_size, max_model_len,
                                  config, clock)
    finished = []
    postprocess = sched.postprocess

    def recorded(b, tokens):
        done = postprocess(b, tokens)
        finished.extend(done)
        return done

    sched.postprocess = recorded
    result = run(sched, seqs, executor, config.num_slots, clock)
    return result, seqs, finished, sched


@pytest.mark.parametrize("policy", ["prefill-first", "temporal"])
def test_one_stage_one_slot_is_the_scheduler_run_on_the_cost_model(policy):
    w = uniform(40, (16, 200), (1, 60), seed=1)
    config = SchedulingConfig(policy, max_num_seqs=12, max_num_batched_tokens=600)
    pipe = StagePipeline(pipeline_layout(M8B, H200, 1, layer_us=1.0, head_us=1.0), COST,
                         LINKS["pcie5"])
    result, _, _, _ = _sim(w, pipe, config)
    # the same scheduler driven by hand, one batch after another, each priced by the cost model
    by_hand = make_policy("temporal", COST) if policy == "temporal" else make_policy(policy)
    sched = Scheduler(SchedulerConfig(4096, 12, 600), BlockManager(4000, 16), by_hand)
    for i, (p, o) in enumerate(zip(w.prompt_lens, w.output_lens)):
        sched.add(Sequence(i, [7] * p, SamplingParams(max_tokens=o)))
    elapsed, batches = 0.0, 0
    while sched.has_unfinished():
        b = sched.schedule()
        lens = [s.num_tokens for s in b.seqs]
        elapsed += COST.prefill_us(lens) if b.kind == "prefill" \
            else COST.sequential_step_us(len(lens), sum(lens))
        sched.postprocess(b, [7] * len(b.seqs))
        batches += 1
    assert result.makespan_us == pytest.approx(elapsed, rel=1e-12)
    assert result.batches == batches and result.bubble_fraction == pytest.approx(0, abs=1e-12)


def test_a_micro_batch_waits_for_each_busy_server_in_turn():
    import numpy as np

    # servers free at 0, 10, 0; service 2, 3, 4; issued at 1: [1, 3], then server 1 is busy
    # until 10: [10, 13], then [13, 17]
    assert queue_through(np.array([0.0, 10.0, 0.0]), np.array([2.0, 3.0, 4.0]), 1.0).tolist() \
        == [3.0, 13.0, 17.0]
    # every server free: one after another from the issue
    assert queue_through(np.zeros(3), np.array([2.0, 3.0, 4.0]), 5.0).tolist() == [7.0, 10.0, 14.0]
    # the first server busy until 6 delays the rest
    assert queue_through(np.array([6.0, 0.0]), np.array([1.0, 1.0]), 0.0).tolist() == [7.0, 8.0]


def test_two_equal_stages_overlap_two_micro_batches():
    # 4 requests of 4 prompt tokens, 3 output tokens; each stage takes 1 us per sequence.
    # Prefill of all 4: stage 0 [0, 4], stage 1 [4, 8]. Decode in 2 micro-batches of 2:
    # A [8, 10] [10, 12], B [10, 12] [12, 14], A' [12, 14] [14, 16], B' [14, 16] [16, 18].
    # One slot would take 8 + 2 x 8 = 24 us.
    config = SchedulingConfig("prefill-first", num_slots=2)
    two, seqs, finished, _ = _sim(fixed(4, 4, 3), PerSequenceStages(2), config)
    assert two.makespan_us == 18.0 and two.batches == 5
    # busy: 2 x 4 (prefill) + 4 micro-batches x 2 stages x 2 = 24 of 2 x 18 us
    assert two.compute_gpu_us == 24.0 and two.bubble_fraction == pytest.approx(1 - 24 / 36)
    one, _, _, _ = _sim(fixed(4, 4, 3), PerSequenceStages(2), SchedulingConfig("prefill-first"))
    assert one.makespan_us == 24.0
    assert [s.finish_time_s * 1e6 for s in seqs] == [16.0, 16.0, 18.0, 18.0]


@pytest.mark.parametrize("policy, stages", [("prefill-first", 4), ("temporal", 4),
                                            ("temporal", 1)])
def test_every_request_finishes_once_with_its_max_tokens_even_when_preempted(policy, stages):
    w = sharegpt_shaped(120, seed=7)
    config = SchedulingConfig(policy, num_slots=stages, max_num_seqs=64, num_stages=stages,
                              kv_threshold=1.0)
    # a pool of 600 blocks (9600 tokens) for requests of ~460 tokens: prefill-first preempts
    result, seqs, finished, sched = _sim(w, PerSequenceStages(stages), config, num_blocks=601)
    assert sorted(s.seq_id for s in finished) == list(range(120))
    assert [s.num_output_tokens for s in seqs] == list(w.output_lens)
    assert all(s.finish_reason == "length" for s in seqs)
    assert result.output_tokens == w.output_tokens and result.prompt_tokens == w.prompt_tokens
    assert sched.block_manager.num_used_blocks == 0
    if policy == "prefill-first":
        assert result.preemptions > 0
        assert result.prefill_tokens > w.prompt_tokens          # recomputed tokens


def test_no_request_is_in_two_micro_batches_at_once():
    w = uniform(60, (8, 64), (2, 40), seed=2)
    config = SchedulingConfig("temporal", num_slots=3, max_num_seqs=24, num_stages=3)
    clock = VirtualClock()
    sched, seqs = build_scheduler(w, COST, 400, 16, 2048, config, clock)
    in_flight: dict[int, int] = {}
    schedule, postprocess = sched.schedule, sched.postprocess

    def checked_schedule():
        b = schedule()
        for s in b.seqs if b else ():
            assert s.seq_id not in in_flight, f"sequence {s.seq_id} in two micro-batches"
            in_flight[s.seq_id] = b.batch_id
        return b

    def checked_postprocess(b, tokens):
        for s in b.seqs:
            assert in_flight.pop(s.seq_id) == b.batch_id
        return postprocess(b, tokens)

    sched.schedule, sched.postprocess = checked_schedule, checked_postprocess
    result = run(sched, seqs, PerSequenceStages(3), 3, clock)
    assert not in_flight and result.output_tokens == w.output_tokens


def test_temporal_switches_where_the_intensity_rule_with_four_stages_says():
    stages, budget = 4, 512
    w = sharegpt_shaped(150, seed=11)
    config = SchedulingConfig("temporal", num_slots=stages, max_num_seqs=32,
                              max_num_batched_tokens=budget, num_stages=stages,
                              switch_cost_us=50.0)
    clock = VirtualClock()
    sched, seqs = build_scheduler(w, MEMO, 4000, 16, 4096, config, clock)
    policy, schedule = sched.policy, sched.schedule
    decisions = []

    def checked_schedule():
        deciding = policy.phase == "decode" and sched.running and sched.waiting
        admitted = policy._greedy(sched, None) if deciding else []
        expected = None
        if admitted:
            running = sched.running
            kv = sum(s.num_tokens for s in running)
            now = len(running) / (stages * COST.sequential_step_us(len(running) / stages,
                                                                   kv / stages))
            lens = [s.num_tokens for s in admitted]
            expected = switch_intensity(now, policy.start_rate, COST.prefill_us(lens), 50.0,
                                        num_stages=stages,
                                        prefill_micro_batches=prefill_batches(lens, budget))
        b = schedule()
        if expected is not None:
            assert policy.last_intensity == expected
            assert (b is not None and b.kind == "prefill") == expected.switch
            decisions.append(expected.switch)
        return b

    sched.schedule = checked_schedule
    result = run(sched, seqs, StagePipeline(
        pipeline_layout(M8B, H200, stages, layer_us=1.0, head_us=1.0), MEMO, LINKS["pcie5"]),
        stages, clock)
    assert result.switches == policy.switches == sum(decisions) > 0
    assert decisions.count(False) > decisions.count(True)     # most steps keep decoding


def _host(schedule=1.0, stage=2.0, sample=3.0, postprocess=4.0) -> EngineCosts:
    return EngineCosts(host_us_per_seq=(("schedule", schedule), ("stage", stage),
                                        ("sample", sample), ("postprocess", postprocess)),
                       host_factor=1.0, padding=False, sampling=False)


def test_on_one_gpu_the_hosts_time_adds_to_every_step_and_splits_as_the_engine_times_it():
    # 4 requests of 4 prompt + 3 output tokens: a prefill of 4 and 2 decode steps of 4, each
    # 4 us of GPU and 4 x (1 + 2 + 3 + 4) = 40 us of host: 3 x 44 us
    config = SchedulingConfig("prefill-first")
    clock = VirtualClock()
    sched, seqs = build_scheduler(fixed(4, 4, 3), MEMO, 4000, 16, 4096, config, clock)
    result = run(sched, seqs, PerSequenceStages(1), 1, clock, engine=_host())
    assert result.makespan_us == 132.0 and result.decode_steps == 2
    # timed: GPU + staging + sampling; untimed: scheduling + postprocess
    assert (result.timed_prefill_us, result.timed_decode_us) == (4 + 20.0, 2 * (4 + 20.0))
    assert result.untimed_host_us == 3 * 20.0 and result.decode_tokens == 8
    assert result.timed_prefill_us + result.timed_decode_us + result.untimed_host_us == \
        result.makespan_us
    # the last token is returned at the GPU's end; its postprocess ends the run
    assert max(s.finish_time_s for s in seqs) * 1e6 == 132.0 - 4 * (3 + 4)


def test_with_micro_batches_in_flight_the_hosts_time_overlaps_the_other_stages():
    config = SchedulingConfig("prefill-first", num_slots=2)
    without, _, _, _ = _sim(fixed(8, 4, 6), PerSequenceStages(2, us_per_seq=10.0), config)
    clock = VirtualClock()
    sched, seqs = build_scheduler(fixed(8, 4, 6), MEMO, 4000, 16, 4096, config, clock)
    host = _host(0.5, 0.5, 0.5, 0.5)                           # 2 us per sequence of a batch
    with_host = run(sched, seqs, PerSequenceStages(2, us_per_seq=10.0), 2, clock, engine=host)
    total_host = 2.0 * (8 + 2 * 4 * 5)                 # a prefill of 8, 10 decodes of 4
    assert with_host.makespan_us > without.makespan_us
    assert with_host.makespan_us < without.makespan_us + total_host
