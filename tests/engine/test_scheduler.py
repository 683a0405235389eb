import random

import pytest

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.params import SamplingParams
from pipedecode.engine.policies import PrefillFirstPolicy
from pipedecode.engine.predictor import OnlineLengthEstimator
from pipedecode.engine.scheduler import Scheduler, SchedulerConfig, group_micro_batches
from pipedecode.engine.sequence import Sequence, SequenceStatus

from tests.engine.helpers import EOS, drive, make_seq



def _scheduler(num_blocks=9, block_size=4, policy=None, **config):
    config.setdefault("max_model_len", (num_blocks - 1) * block_size)
    return Scheduler(SchedulerConfig(eos_token_ids={EOS}, **config),
                     BlockManager(num_blocks, block_size), policy or PrefillFirstPolicy(),
                     clock=lambda: 100.0)


def test_prefill_admits_in_order_under_the_limits_then_decodes():
    sched = _scheduler(num_blocks=20, max_num_seqs=3, max_num_batched_tokens=10)
    seqs = [make_seq(i, 4) for i in range(5)]
    for s in seqs:
        sched.add(s)
    first = sched.schedule()
    assert first.kind == "prefill" and [s.seq_id for s in first.seqs] == [0, 1]   # 8 <= 10 < 12
    assert first.num_tokens == 8 and all(s.in_flight for s in first.seqs)
    sched.postprocess(first, [7, 7])
    second = sched.schedule()
    assert [s.seq_id for s in second.seqs] == [2]                      # max_num_seqs 3
    sched.postprocess(second, [7])
    third = sched.schedule()
    assert third.kind == "decode" and [s.seq_id for s in third.seqs] == [0, 1, 2]
    assert third.num_tokens == 3 and third.micro_batches == ((0, 1, 2),)


def test_a_prompt_longer_than_the_token_budget_runs_alone():
    sched = _scheduler(num_blocks=20, max_num_batched_tokens=4)
    for s in (make_seq(0, 9), make_seq(1, 2)):
        sched.add(s)
    assert [s.seq_id for s in sched.schedule().seqs] == [0]


def test_finished_sequences_free_their_blocks_and_teach_the_predictor():
    sched = _scheduler()
    sched.predictor = est = OnlineLengthEstimator()
    a, b = make_seq(0, 4, max_tokens=3), make_seq(1, 4, ignore_eos=True)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert sched.postprocess(batch, [EOS, EOS]) == [a]          # b ignores EOS
    assert a.finish_reason == "stop" and a.block_table == [] and a.finish_time_s == 100.0
    assert a.first_token_time_s == 100.0 and sched.running == [b]
    assert est.predict([0] * 4) < est.prior_tokens              # learnt from a's 1 token
    sched.postprocess(sched.schedule(), [7])
    assert b.num_tokens == 6 and len(b.block_table) == 2        # grew into a second block
    assert sched.block_manager.num_used_blocks == 2


def test_preemption_recomputes_the_most_recent_and_loses_nothing():
    sched = _scheduler(num_blocks=5, block_size=2)              # 4 usable blocks
    a, b = make_seq(0, 2), make_seq(1, 2)
    sched.add(a)
    sched.add(b)
    sched.postprocess(sched.schedule(), [7, 8])                 # a, b: 3 tokens, 1 block each
    batch = sched.schedule()                                    # each takes a 2nd block
    assert batch.kind == "decode" and sched.block_manager.num_free_blocks == 0
    sched.postprocess(batch, [9, 10])                           # 4 tokens each
    batch = sched.schedule()                                    # the 4th fits block 2
    assert len(batch.seqs) == 2 and sched.num_preemptions == 0
    sched.postprocess(batch, [11, 12])                          # 5 tokens each
    batch = sched.schedule()                                    # both need a 3rd block
    assert [s.seq_id for s in batch.seqs] == [0] and sched.num_preemptions == 1
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_preemptions == 1
    assert b.token_ids == [3, 4, 8, 10, 12] and list(sched.waiting) == [b]
    assert len(a.block_table) == 3
    sched.postprocess(batch, [EOS])                             # a finishes, frees 3 blocks
    batch = sched.schedule()
    assert batch.kind == "prefill" and batch.seqs == (b,) and batch.num_tokens == 5
    sched.postprocess(batch, [13])
    assert b.output_token_ids == [8, 10, 12, 13] and b.num_computed_tokens == 5


def test_a_lone_sequence_preempts_itself_only_when_younger_ones_are_gone():
    sched = _scheduler(num_blocks=4, block_size=2, max_model_len=6)
    seqs = [make_seq(i, 2) for i in range(3)]                   # 3 blocks, one each
    for s in seqs:
        sched.add(s)
    sched.postprocess(sched.schedule(), [7, 7, 7])
    batch = sched.schedule()            # all three need a block: 2 and 1 are preempted
    assert [s.seq_id for s in batch.seqs] == [0]
    assert [s.seq_id for s in sched.waiting] == [1, 2] and sched.num_preemptions == 2


@pytest.mark.parametrize("policy_seed", range(3))
def test_every_request_finishes_with_its_length_whatever_the_pool(policy_seed):
    rng = random.Random(policy_seed)
    lengths = [rng.randint(1, 12) for _ in range(12)]
    sched = _scheduler(num_blocks=7, block_size=2, max_model_len=12, max_num_seqs=5)
    seqs = [make_seq(i, rng.randint(1, 4), max_tokens=50) for i in range(12)]
    for s in seqs:
        sched.add(s)
    drive(sched, lengths)
    for s in seqs:
        room = 12 - s.num_prompt_tokens
        assert s.num_output_tokens == min(lengths[s.seq_id], room)
        assert s.finish_reason == ("stop" if lengths[s.seq_id] <= room else "length")
    assert sched.num_preemptions > 0 and sched.block_manager.num_used_blocks == 0
    assert sched.block_manager.peak_used_blocks == 6


def test_decode_micro_batches_come_from_the_runners_plan():
    sched = _scheduler(num_blocks=40)
    sched.micro_batches_for = lambda n, kv: 2
    for i, n in enumerate((9, 1, 5, 4, 2)):
        sched.add(make_seq(i, n))
    sched.postprocess(sched.schedule(), [7] * 5)
    batch = sched.schedule()
    assert batch.micro_batches == ((0, 1, 2), (3, 4))
    groups = [sorted(batch.seqs[i].num_tokens for i in mb) for mb in batch.micro_batches]
    # the two longest (10 and 6 tokens) lead different micro-batches: KV 15 vs 11, not 16 vs 10
    assert groups == [[2, 3, 10], [5, 6]]


@pytest.mark.parametrize("seed", range(20))
def test_micro_batches_balance_sizes_and_kv(seed):
    rng = random.Random(seed)
    n, m = rng.randint(1, 40), rng.randint(1, 6)
    seqs = [make_seq(i, rng.randint(1, 2000)) for i in range(n)]
    groups = group_micro_batches(seqs, m)
    assert sorted(i for g in groups for i in g) == list(range(n))
    assert len(groups) == min(m, n)
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1
    kv = [sum(seqs[i].num_tokens for i in g) for g in groups]
    assert max(kv) - min(kv) <= max(s.num_tokens for s in seqs)


def test_with_slots_a_sequence_is_never_in_two_batches():
    sched = _scheduler(num_blocks=40, num_slots=2)
    for i in range(5):
        sched.add(make_seq(i, 3))
    prefill = sched.schedule()
    assert sched.schedule() is None                 # everything in flight
    sched.postprocess(prefill, [7] * 5)
    first, second = sched.schedule(), sched.schedule()
    ids1, ids2 = {s.seq_id for s in first.seqs}, {s.seq_id for s in second.seqs}
    assert len(ids1) == 3 and len(ids2) == 2 and not ids1 & ids2
    assert sched.schedule() is None
    sched.postprocess(second, [EOS, 7])             # one of the second batch finishes
    third = sched.schedule()                        # ready: 1 of 4 running, target 2
    assert {s.seq_id for s in third.seqs} <= ids2 and len(third.seqs) == 1
    sched.postprocess(first, [7] * 3)
    fourth = sched.schedule()                       # the 3 back now; at most 2 leave
    assert len(fourth.seqs) == 2 and {s.seq_id for s in fourth.seqs} <= ids1
    held_back = ids1 - {s.seq_id for s in fourth.seqs}
    sched.postprocess(third, [7])
    fifth = sched.schedule()                        # the one held back goes first
    assert held_back <= {s.seq_id for s in fifth.seqs}
    with pytest.raises(RuntimeError, match="not in flight"):
        sched.postprocess(third, [7])


def test_a_prediction_is_reused_until_the_predictor_learns_again():
    class Counting(OnlineLengthEstimator):
        calls = 0

        def predict(self, prompt_token_ids):
            Counting.calls += 1
            return super().predict(prompt_token_ids)

    sched = _scheduler(num_blocks=20)
    sched.predictor = Counting(prior_tokens=10)
    a, b = make_seq(0, 4, max_tokens=50), make_seq(1, 4, max_tokens=50)
    assert [sched.predict(a) for _ in range(3)] == [10] * 3 and Counting.calls == 1
    sched.add(a)
    sched.postprocess(sched.schedule(), [EOS])              # a finishes after 1 token: learnt
    assert sched.observations == 1 and Counting.calls == 1
    assert sched.predict(b) < 10 and Counting.calls == 2
    assert sched.predict(b) == b.predicted_output_len and Counting.calls == 2
    sched.predictor = Counting(prior_tokens=40)             # another predictor: asked anew
    assert sched.predict(b) == 40 and Counting.calls == 3


def test_predictions_are_capped_and_exact_where_only_max_tokens_stops():
    sched = _scheduler(num_blocks=9, block_size=4)          # max_model_len 32
    sched.predictor = OnlineLengthEstimator(prior_tokens=100)
    assert sched.predict(make_seq(0, 4, max_tokens=10)) == 10
    assert sched.predict(make_seq(1, 30, max_tokens=10)) == 2
    assert sched.predict(make_seq(2, 4, max_tokens=500)) == 28
    sched.predictor = OnlineLengthEstimator(prior_tokens=3)
    assert sched.predict(make_seq(3, 4, max_tokens=10)) == 3
    assert sched.predict(make_seq(4, 4, max_tokens=10, ignore_eos=True)) == 10
    assert sched.predict(make_seq(5, 4, max_tokens=10, ignore_eos=True, stop_token_ids=[5])) == 3


def test_abort_finishes_everything_with_the_error():
    sched = _scheduler()
    a, b = make_seq(0, 4), make_seq(1, 30)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.abort_all("boom") == [a, b]
    assert a.finish_reason == b.finish_reason == "error" and a.error == "boom"
    assert sched.block_manager.num_used_blocks == 0 and not sched.has_unfinished()


def test_bad_configs_and_sequences():
    with pytest.raises(ValueError, match="SchedulerConfig.max_num_seqs"):
        SchedulerConfig(max_model_len=8, max_num_seqs=0)
    with pytest.raises(ValueError, match="exceeds the pool"):
        _scheduler(num_blocks=3, block_size=4, max_model_len=9)
    sched = _scheduler()
    with pytest.raises(ValueError, match="no room within max_model_len 32"):
        sched.add(make_seq(0, 32))
    with pytest.raises(ValueError, match="non-empty"):
        sched.add(Sequence(1, [], SamplingParams()))
