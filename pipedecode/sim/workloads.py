"""Offline workloads: prompt and output lengths of a batch of requests, seeded and reproducible.

Owns `Workload`, the generators (`sharegpt_shaped`, `uniform`, `fixed`), `make_workload` (from
a spec string such as "sharegpt" or "uniform:16:512:16:256") and `Workload.prompts` (random
distinct token ids for a real engine run). The simulator and the engine's offline throughput
benchmark build their workloads here, so a measured run and its simulation see the same
requests. Knows nothing of models, schedulers or GPUs.

ShareGPT-shaped: lognormal prompt and output lengths whose means before filtering are
ShareGPT's as the vLLM paper reports them (161 prompt and 338 output tokens; Kwon et al.,
SOSP 2023, fig. 11), with the spreads below (an ASSUMPTION: shaped like ShareGPT, not fitted
to it), filtered as vLLM's throughput benchmark filters ShareGPT (both lengths >= 4, prompt
<= 1024, prompt + output <= 2048: pairs outside are drawn again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAREGPT_PROMPT_MEAN = 161.0      # tokens, before filtering
SHAREGPT_OUTPUT_MEAN = 338.0
SHAREGPT_PROMPT_SIGMA = 1.0       # of log(length): assumed
SHAREGPT_OUTPUT_SIGMA = 0.8
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048
WORKLOAD_HELP = ("sharegpt (ShareGPT-shaped lognormal lengths), uniform:PLO:PHI:OLO:OHI "
                 "(prompt and output lengths uniform in [lo, hi]) or fixed:PROMPT:OUTPUT")


@dataclass(frozen=True)
class Workload:
    """Requests i = 0..n-1: prompt_lens[i] prompt tokens, output_lens[i] tokens to generate
    (the request's max_tokens). spec: how it was made (make_workload's string)."""

    spec: str
    prompt_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_lens or len(self.prompt_lens) != len(self.output_lens):
            raise ValueError(f"Workload {self.spec}: prompt_lens and output_lens must be "
                             f"non-empty and equally long")
        if min(self.prompt_lens) < 1 or min(self.output_lens) < 1:
            raise ValueError(f"Workload {self.spec}: lengths must be >= 1")

    @property
    def num_requests(self) -> int:
        return len(self.prompt_lens)

    @property
    def prompt_tokens(self) -> int:
        return sum(self.prompt_lens)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)

    def requests(self, start: int = 0, step: int = 1) -> "Workload":
        """Every step-th request from `start` (a data-parallel replica's share)."""
        return Workload(f"{self.spec}[{start}::{step}]", self.prompt_lens[start::step],
                        self.output_lens[start::step], self.seed)

    def prompts(self, vocab_size: int, low_token_id: int = 3) -> list[list[int]]:
        """Distinct random prompts of the workload's lengths, ids in [low_token_id, vocab)
        (ids below it are left to special tokens), seeded by the workload's seed."""
        ids_free = vocab_size - low_token_id
        if ids_free < 2:
            raise ValueError(f"vocab_size {vocab_size} leaves no ids above {low_token_id}")
        for n in set(self.prompt_lens):
            if self.prompt_lens.count(n) > ids_free ** min(n, 8):
                raise ValueError(f"{self.prompt_lens.count(n)} distinct prompts of {n} tokens "
                                 f"cannot be drawn from {ids_free} token ids")
        rng = np.random.default_rng([self.seed, 1])
        seen, out = set(), []
        for n in self.prompt_lens:
            while True:
                ids = rng.integers(low_token_id, vocab_size, size=n).tolist()
                if tuple(ids) not in seen:            # OracleLengths needs distinct prompts
                    break
            seen.add(tuple(ids))
            out.append(ids)
        return out

    def summary(self) -> dict:
        n = self.num_requests
        return dict(spec=self.spec, seed=self.seed, requests=n,
                    mean_prompt_tokens=self.prompt_tokens / n,
                    mean_output_tokens=self.output_tokens / n,
                    max_prompt_tokens=max(self.prompt_lens),
                    max_output_tokens=max(self.output_lens))


def _lognormal_mu(mean: float, sigma: float) -> float:
    return math.log(mean) - sigma * sigma / 2          # E[exp(N(mu, s^2))] = exp(mu + s^2/2)


def sharegpt_shaped(num_requests: int, seed: int = 0) -> Workload:
    """ShareGPT-shaped lengths (module docstring), drawn in vectorised rounds of rejection."""
    _check_count(num_requests)
    rng = np.random.default_rng([seed, 0])
    prompts, outputs = np.empty(0, np.int64), np.empty(0, np.int64)
    mu_p = _lognormal_mu(SHAREGPT_PROMPT_MEAN, SHAREGPT_PROMPT_SIGMA)
    mu_o = _lognormal_mu(SHAREGPT_OUTPUT_MEAN, SHAREGPT_OUTPUT_SIGMA)
    while len(prompts) < num_requests:
        size = 2 * (num_requests - len(prompts)) + 16
        p = np.rint(rng.lognormal(mu_p, SHAREGPT_PROMPT_SIGMA, size)).astype(np.int64)
        o = np.rint(rng.lognormal(mu_o, SHAREGPT_OUTPUT_SIGMA, size)).astype(np.int64)
        keep = (p >= SHAREGPT_MIN_LEN) & (o >= SHAREGPT_MIN_LEN) \
            & (p <= SHAREGPT_MAX_PROMPT) & (p + o <= SHAREGPT_MAX_TOTAL)
        prompts, outputs = np.concatenate([prompts, p[keep]]), np.concatenate([outputs, o[keep]])
    return Workload("sharegpt", tuple(prompts[:num_requests].tolist()),
                    tuple(outputs[:num_requests].tolist()), seed)


def uniform(num_requests: int, prompt_range: tuple[int, int], output_range: tuple[int, int],
            seed: int = 0) -> Workload:
    _check_count(num_requests)
    for what, (lo, hi) in (("prompt", prompt_range), ("output", output_range)):
        if not 1 <= lo <= hi:
            raise ValueError(f"uniform {what} lengths need 1 <= lo <= hi, got {lo}:{hi}")
    rng = np.random.default_rng([seed, 0])
    p = rng.integers(prompt_range[0], prompt_range[1] + 1, num_requests)
    o = rng.integers(output_range[0], output_range[1] + 1, num_requests)
    spec = "uniform:{}:{}:{}:{}".format(*prompt_range, *output_range)
    return Workload(spec, tuple(p.tolist()), tuple(o.tolist()), seed)


def fixed(num_requests: int, prompt_len: int, output_len: int) -> Workload:
    _check_count(num_requests)
    if prompt_len < 1 or output_len < 1:
        raise ValueError(f"fixed lengths must be >= 1, got {prompt_len}:{output_len}")
    return Workload(f"fixed:{prompt_len}:{output_len}", (prompt_len,) * num_requests,
                    (output_len,) * num_requests)


def make_workload(spec: str, num_requests: int, seed: int = 0) -> Workload:
    """A workload from its spec (WORKLOAD_HELP); ValueError naming the spec otherwise."""
    kind, _, rest = spec.partition(":")
    try:
        args = [int(a) for a in rest.split(":")] if rest else []
    except ValueError:
        args = None
    if kind == "sharegpt" and args == []:
        return sharegpt_shaped(num_requests, seed)
    if kind == "uniform" and args is not None and len(args) == 4:
        return uniform(num_requests, (args[0], args[1]), (args[2], args[3]), seed)
    if kind == "fixed" and args is not None and len(args) == 2:
        return fixed(num_requests, args[0], args[1])
    raise ValueError(f"cannot read workload {spec!r}; use {WORKLOAD_HELP}")


def _check_count(num_requests: int) -> None:
    if not isinstance(num_requests, int) or isinstance(num_requests, bool) or num_requests < 1:
        raise ValueError(f"a workload needs a positive number of requests, got {num_requests!r}")
