import pytest

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.policies import (PrefillFirstPolicy, TemporalPolicy, fitting_prefix,
                                        make_policy)
from pipedecode.engine.predictor import OracleLengths
from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
from pipedecode.models import model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.planner.switch import switch_intensity
from pipedecode.profiles.analytic import BUILTIN

from tests.engine.helpers import EOS, drive, make_seq

COST = CostModel(model_shape("tiny-llama"), BUILTIN["h100"])


def _scheduler(policy, num_blocks=21, block_size=4, predictor=None, **config):
    config.setdefault("max_model_len", min(64, (num_blocks - 1) * block_size))
    return Scheduler(SchedulerConfig(eos_token_ids={EOS}, **config),
                     BlockManager(num_blocks, block_size), policy, predictor)


def test_fitting_prefix_respects_blocks_seats_and_budget():
    sched = _scheduler(PrefillFirstPolicy(), num_blocks=6, max_num_seqs=3)   # 5 blocks
    for i, n in enumerate((4, 8, 4, 4)):                       # 1, 2, 1, 1 blocks
        sched.add(make_seq(i, n))
    assert [s.seq_id for s in fitting_prefix(sched, None)] == [0, 1, 2]      # 3 seats
    assert [s.seq_id for s in fitting_prefix(sched, 12)] == [0, 1]          # 16 > 12
    assert [s.seq_id for s in fitting_prefix(sched, 1)] == [0]              # first always


def test_prefill_first_fills_the_pool_with_prompts():
    sched = _scheduler(PrefillFirstPolicy())                   # 20 blocks
    for i in range(12):
        sched.add(make_seq(i, 4, max_tokens=8, ignore_eos=True))
    assert len(sched.schedule().seqs) == 12                    # 1 block each fits now


def test_temporal_admits_while_the_predicted_peak_fits_the_threshold():
    policy = TemporalPolicy(COST, kv_threshold=0.5)            # 10 of 20 blocks
    sched = _scheduler(policy)
    for i in range(12):                                        # peak 4 + 8 = 3 blocks
        sched.add(make_seq(i, 4, max_tokens=8, ignore_eos=True))
    batch = sched.schedule()
    assert [s.seq_id for s in batch.seqs] == [0, 1, 2]         # 9 blocks; a 4th makes 12
    assert policy.phase == "prefill"
    sched.postprocess(batch, [7, 7, 7])
    assert sched.schedule().kind == "decode" and policy.phase == "decode"


def test_a_request_alone_runs_whatever_its_predicted_peak():
    policy = TemporalPolicy(COST, kv_threshold=0.1)            # 2 blocks: nothing fits
    sched = _scheduler(policy)
    for i in range(2):
        sched.add(make_seq(i, 4, max_tokens=30, ignore_eos=True))
    assert [s.seq_id for s in sched.schedule().seqs] == [0]


def _workload(sched, lengths, prompt_len=4):
    seqs = []
    for i in range(len(lengths)):
        seq = make_seq(i, prompt_len, max_tokens=40)
        seq.token_ids[0] = 100 + i                             # distinct prompts
        seqs.append(seq)
        sched.add(seq)
    return seqs


def test_temporal_with_oracle_lengths_never_preempts_where_prefill_first_does():
    lengths = [3, 17, 9, 25, 5, 12, 30, 7, 14, 21, 4, 18]
    prefill_first = _scheduler(PrefillFirstPolicy())
    _workload(prefill_first, lengths)
    drive(prefill_first, lengths)
    assert prefill_first.num_preemptions > 0

    temporal = _scheduler(TemporalPolicy(COST, kv_threshold=1.0))
    seqs = _workload(temporal, lengths)
    temporal.predictor = OracleLengths([s.prompt_token_ids for s in seqs], lengths)
    log = drive(temporal, lengths)
    assert temporal.num_preemptions == 0
    assert sum(r["kind"] == "prefill" for r in log) > 1        # prefill phases came back
    assert [s.num_output_tokens for s in seqs] == lengths


def test_the_switch_back_to_prefill_waits_for_the_intensity_to_drop():
    # 4 seats: the first phase admits 4, 2 wait. Decode rate relative to the phase's start
    # drops to ~3/4, ~2/4, ~1/4 as requests finish; with the bubble at 60% of the waiting
    # prompts' prefill the temporal intensity is ~0.4, so only the last drop switches.
    bubble = 0.6 * COST.prefill_us([4, 4])
    policy = TemporalPolicy(COST, kv_threshold=1.0, switch_cost_us=bubble)
    sched = _scheduler(policy, num_blocks=101, max_num_seqs=4)     # peaks 11 blocks each
    lengths = [2, 5, 8, 30, 3, 3]
    _workload(sched, lengths)
    seen = []
    while sched.has_unfinished():
        running = list(sched.running)
        batch = sched.schedule()
        if batch.kind == "prefill" and running:
            seen.append(len(running))
            kv = sum(s.num_tokens for s in running)
            now = len(running) / COST.sequential_step_us(len(running), kv)
            expected = switch_intensity(now, policy.start_rate, COST.prefill_us([4, 4]), bubble)
            assert expected.switch and policy.last_intensity == expected
        sched.postprocess(batch, [EOS if s.num_output_tokens + 1 >= lengths[s.seq_id] else 7
                                  for s in batch.seqs])
    assert seen == [1] and policy.switches == 1


@pytest.mark.parametrize("bubble_us, late_prefills", [(0.0, [3, 3]), (1e12, [])])
def test_the_bubble_decides_whether_to_switch_at_all(bubble_us, late_prefills):
    policy = TemporalPolicy(COST, kv_threshold=1.0, switch_cost_us=bubble_us)
    sched = _scheduler(policy, num_blocks=101, max_num_seqs=4)     # peaks 11 blocks each
    lengths = [2, 5, 8, 30, 3, 3]
    _workload(sched, lengths)
    log = drive(sched, lengths)
    # no bubble: switch whenever a seat frees (the rate has dropped: one request fewer);
    # an endless bubble: decode the batch to its end first
    late = [r["running"] for r in log if r["kind"] == "prefill" and r["running"]]
    assert late == late_prefills and policy.switches == len(late_prefills)


def test_policies_by_name():
    assert make_policy("prefill-first").name == "prefill-first"
    assert make_policy("temporal", COST, kv_threshold=0.8).kv_threshold == 0.8
    with pytest.raises(ValueError, match="unknown scheduling policy 'fifo'"):
        make_policy("fifo")
    with pytest.raises(ValueError, match="needs a cost model"):
        make_policy("temporal")
    with pytest.raises(ValueError, match="takes no options"):
        make_policy("prefill-first", kv_threshold=0.5)
    with pytest.raises(ValueError, match="kv_threshold"):
        TemporalPolicy(COST, kv_threshold=1.5)
