from pipedecode.engine.params import SamplingParams
from pipedecode.engine.sequence import Sequence, SequenceStatus, first_stop_string, stop_check

EOS = frozenset({2})


def _seq(**params):
    return Sequence(0, [5, 6, 7], SamplingParams(**params))


def test_append_marks_everything_before_the_new_token_computed():
    seq = _seq()
    assert (seq.num_tokens, seq.num_output_tokens, seq.num_computed_tokens) == (3, 0, 0)
    seq.append(9)
    assert seq.num_computed_tokens == 3 and seq.last_token_id == 9
    assert seq.output_token_ids == [9] and seq.prompt_token_ids == [5, 6, 7]
    seq.block_table, seq.status = [1], SequenceStatus.RUNNING
    seq.reset_for_recompute()
    assert (seq.status, seq.block_table, seq.num_computed_tokens, seq.num_preemptions) == \
        (SequenceStatus.WAITING, [], 0, 1)
    assert seq.token_ids == [5, 6, 7, 9]           # the output is kept, to be recomputed


def test_peak_is_the_prediction_until_outgrown():
    seq = _seq()
    seq.predicted_output_len = 4
    assert seq.peak_tokens() == 7
    for t in range(6):
        seq.append(10 + t)
    assert seq.peak_tokens() == 9


def _after(seq, *tokens):
    for t in tokens:
        seq.append(t)
    return seq


def test_stop_conditions_in_order():
    assert stop_check(_after(_seq(), 2), EOS, 100) == ("stop", None)
    assert stop_check(_after(_seq(ignore_eos=True), 2), EOS, 100) is None
    assert stop_check(_after(_seq(stop_token_ids=[8]), 8), EOS, 100) == ("stop", 8)
    # EOS as the max_tokens-th token is a stop, not a length finish (vLLM's order)
    assert stop_check(_after(_seq(max_tokens=2), 9, 2), EOS, 100) == ("stop", None)
    assert stop_check(_after(_seq(max_tokens=2), 9), EOS, 100) is None
    assert stop_check(_after(_seq(max_tokens=2), 9, 9), EOS, 100) == ("length", None)
    assert stop_check(_after(_seq(), 9, 9), EOS, 5) == ("length", None)
    assert stop_check(_after(_seq(), 9), EOS, 5) is None


def test_stop_strings_through_the_detokenizer():
    words = {9: "a", 10: "b#", 11: "#c"}

    def detok(ids):
        return "".join(words[i] for i in ids)

    seq = _after(_seq(stop=["##"]), 9, 10)
    assert stop_check(seq, EOS, 100, detok) is None
    assert stop_check(_after(seq, 11), EOS, 100, detok) == ("stop", "##")
    assert stop_check(seq, EOS, 100, None) is None     # no tokenizer: strings are not checked
    assert first_stop_string("xx##yy!", ["!", "##"]) == (2, "##")
    assert first_stop_string("xx", ["!"]) is None
