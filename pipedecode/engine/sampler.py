"""Next tokens from logits: greedy, temperature, top-k, top-p, with per-request seeded generators.

Owns `Sampler` and the torch of sampling. Sampling draws an exponential variate per vocabulary
entry and takes argmax(p / q) (the exponential race: the same distribution as a categorical
draw, one kernel, no sort). A request with a seed has its own torch.Generator that advances
only with its own tokens, so its tokens are the same whatever else is in the batch; requests
without one draw from torch's global generator. Knows nothing of scheduling: it reads each
sequence's `seq_id` and `params`.
"""

from __future__ import annotations

from typing import Sequence as Seq

import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.sequence import Sequence


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                      ) -> torch.Tensor:
    """logits [n, vocab] float32 with entries outside each row's top-k / top-p set to -inf.

    top_k [n] int64 (0: all), top_p [n] float32 (1: all). The top-p set is the smallest set of
    most likely tokens whose probability reaches top_p (the most likely token always stays)."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    drop = rank >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs          # mass strictly more likely than each entry
    drop |= (before >= top_p[:, None]) & (top_p[:, None] < 1)   # p = 1: no cut from rounding
    drop[:, 0] = False
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


class Sampler:
    """Samples one token per row; keeps the generators of seeded requests until released."""

    def __init__(self) -> None:
        self._generators: dict[int, torch.Generator] = {}

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    def _generator(self, seq_id: int, seed: int, device: torch.device) -> torch.Generator:
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(seed)
            self._generators[seq_id] = gen
        return gen

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> list[int]:
        """Token ids for logits [len(seqs), vocab] (any float dtype, computed in float32)."""
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(f"logits must be [{len(seqs)}, vocab], got {tuple(logits.shape)}")
        params: list[SamplingParams] = [s.params for s in seqs]
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        if all([p.temperature == 0 for p in params]):          # all greedy (p.greedy)
            return greedy.tolist()
        rows = [i for i, p in enumerate(params) if not p.greedy]
        sampled = self._sample(logits[rows], [seqs[i] for i in rows])
        greedy[rows] = sampled
        return greedy.tolist()

    def _sample(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        device = logits.device
        temps = torch.tensor([s.params.temperature for s in seqs], device=device)
        top_k = torch.tensor([s.params.top_k for s in seqs], device=device, dtype=torch.int64)
        top_p = torch.tensor([s.params.top_p for s in seqs], device=device)
        logits = logits / temps[:, None]
        if bool((top_k > 0).any()) or bool((top_p < 1).any()):
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        q = torch.empty_like(probs).exponential_()
        for i, seq in enumerate(seqs):
            if seq.params.seed is not None:
                q[i].exponential_(generator=self._generator(seq.seq_id, seq.params.seed, device))
        return (probs / q.clamp_min_(1e-10)).argmax(dim=-1)
