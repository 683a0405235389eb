import pytest
import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.sampler import Sampler, apply_top_k_top_p
from pipedecode.engine.sequence import Sequence


def _seqs(*params):
    return [Sequence(i, [1], p) for i, p in enumerate(params)]


def _logits(n, vocab=50, seed=0):
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = _logits(4)
    tokens = Sampler()(logits, _seqs(*[SamplingParams(temperature=0)] * 4))
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_1_and_a_tiny_top_p_are_greedy_whatever_the_temperature():
    logits = _logits(6)
    params = [SamplingParams(temperature=5.0, top_k=1)] * 3 + \
             [SamplingParams(temperature=5.0, top_p=1e-6)] * 3
    assert Sampler()(logits, _seqs(*params)) == logits.argmax(-1).tolist()


def test_top_k_top_p_masks():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05],
                                     [0.1, 0.2, 0.3, 0.4]]))
    out = apply_top_k_top_p(logits, torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.7, 1.0]))
    keep = torch.isfinite(out)
    # top-2; top-p 0.7 keeps 0.5 and 0.3 (0.5 < 0.7 <= 0.8); p = 1 keeps all
    assert keep.tolist() == [[True, True, False, False], [True, True, False, False],
                             [True, True, True, True]]
    assert torch.equal(out[keep], logits[keep])


def test_sampling_follows_the_tempered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    params = SamplingParams(temperature=2.0)
    counts = torch.bincount(torch.tensor(Sampler()(logits, _seqs(*[params] * 20000))),
                            minlength=4).float() / 20000
    expected = (logits[0] / 2.0).softmax(-1)
    assert torch.allclose(counts, expected, atol=0.015)
    topk = SamplingParams(temperature=1.0, top_k=2)
    tokens = set(Sampler()(logits[:2000], _seqs(*[topk] * 2000)))
    assert tokens == {0, 1}


def test_a_seeded_request_draws_the_same_tokens_in_any_batch():
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=1234)
    logits = _logits(1, seed=5)

    def run(batch_size, position, steps=20):
        sampler, seqs = Sampler(), None
        out = []
        for step in range(steps):
            others = [SamplingParams(temperature=0.7, seed=step if batch_size % 2 else None),
                      SamplingParams(temperature=0)] * batch_size
            params = others[:position] + [seeded] + others[position:batch_size - 1]
            seqs = [Sequence(100 + i if p is not seeded else 7, [1], p)
                    for i, p in enumerate(params)]
            rows = _logits(len(params), seed=50 + step)
            rows[position] = logits[0] + step * 0.01
            out.append(sampler(rows, seqs)[position])
        return out

    alone = run(1, 0)
    assert run(5, 3) == alone and run(8, 7) == alone and run(2, 0) == alone
    assert len(set(alone)) > 1                      # it does sample, not argmax


def test_release_restarts_a_seeded_stream_and_bad_shapes_fail():
    sampler = Sampler()
    seq = _seqs(SamplingParams(seed=3))
    logits = _logits(1)
    first = [sampler(logits, seq)[0] for _ in range(10)]
    sampler.release(0)
    assert [sampler(logits, seq)[0] for _ in range(10)] == first
    with pytest.raises(ValueError, match=r"logits must be \[1, vocab\]"):
        sampler(_logits(2), seq)
