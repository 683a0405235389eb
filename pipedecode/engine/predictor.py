"""Output-length predictors: how many tokens a prompt is expected to produce.

Owns the `LengthPredictor` protocol (`predict(prompt_token_ids) -> expected output tokens`,
`observe(prompt_len, output_len)` after a request finishes), the default `OnlineLengthEstimator`
(learned from finished requests, so it works without a download), `OracleLengths` (the true
lengths, for benchmarks) and `as_predictor`, which wraps any callable. Knows nothing of the
scheduler: it caps predictions by max_tokens and the length limit (`Scheduler.predict`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

DEFAULT_PRIOR_TOKENS = 256.0   # ShareGPT-like chat answers run a few hundred tokens
DEFAULT_PRIOR_WEIGHT = 4.0     # pseudo-requests behind the prior, globally and per bucket


@runtime_checkable
class LengthPredictor(Protocol):
    def predict(self, prompt_token_ids: Sequence[int]) -> float:
        """Expected output tokens of this prompt (> 0)."""

    def observe(self, prompt_len: int, output_len: int) -> None:
        """A finished request's lengths (predictors that do not learn ignore them)."""


class OnlineLengthEstimator:
    """Mean output length per log2 bucket of prompt length, shrunk towards the global mean.

    With n requests of mean m in a bucket, the prediction is (n m + w G) / (n + w), where the
    global mean G = (N M + w_0 prior) / (N + w_0) over all N finished requests: a bucket
    with few observations says little and leans on G, and G leans on `prior_tokens` until
    requests finish. Requests cut at max_tokens count at their cut length (a lower bound).
    """

    def __init__(self, prior_tokens: float = DEFAULT_PRIOR_TOKENS,
                 prior_weight: float = DEFAULT_PRIOR_WEIGHT,
                 bucket_weight: float = DEFAULT_PRIOR_WEIGHT) -> None:
        for name, value in (("prior_tokens", prior_tokens), ("prior_weight", prior_weight),
                            ("bucket_weight", bucket_weight)):
            if not value > 0:
                raise ValueError(f"OnlineLengthEstimator.{name} must be positive, got {value}")
        self.prior_tokens, self.prior_weight = float(prior_tokens), float(prior_weight)
        self.bucket_weight = float(bucket_weight)
        self._count: dict[int, int] = {}
        self._sum: dict[int, float] = {}
        self._n, self._total = 0, 0.0            # over every bucket

    @staticmethod
    def bucket(prompt_len: int) -> int:
        """floor(log2(prompt_len)): 1, 2-3, 4-7, ... tokens."""
        return max(int(prompt_len), 1).bit_length() - 1

    def global_mean(self) -> float:
        return (self._total + self.prior_weight * self.prior_tokens) / (self._n + self.prior_weight)

    def predict(self, prompt_token_ids: Sequence[int]) -> float:
        b = self.bucket(len(prompt_token_ids))
        n, total = self._count.get(b, 0), self._sum.get(b, 0.0)
        return (total + self.bucket_weight * self.global_mean()) / (n + self.bucket_weight)

    def observe(self, prompt_len: int, output_len: int) -> None:
        if output_len <= 0:
            raise ValueError(f"observe: output_len must be positive, got {output_len}")
        b = self.bucket(prompt_len)
        self._count[b] = self._count.get(b, 0) + 1
        self._sum[b] = self._sum.get(b, 0.0) + output_len
        self._n, self._total = self._n + 1, self._total + output_len


class OracleLengths:
    """The true output length of each prompt (from a previous run), for benchmarks."""

    def __init__(self, prompts: Sequence[Sequence[int]], output_lens: Sequence[int]) -> None:
        if len(prompts) != len(output_lens):
            raise ValueError(f"OracleLengths: {len(prompts)} prompts but {len(output_lens)} "
                             f"output lengths")
        self._lens: dict[tuple[int, ...], int] = {}
        for i, (prompt, n) in enumerate(zip(prompts, output_lens)):
            key = tuple(prompt)
            if n <= 0:
                raise ValueError(f"OracleLengths: output length {i} must be positive, got {n}")
            if self._lens.setdefault(key, n) != n:
                raise ValueError(f"OracleLengths: prompt {i} repeats an earlier prompt with "
                                 f"another length ({n} vs {self._lens[key]})")

    def predict(self, prompt_token_ids: Sequence[int]) -> float:
        try:
            return float(self._lens[tuple(prompt_token_ids)])
        except KeyError:
            raise ValueError(f"OracleLengths has no length for a prompt of "
                             f"{len(prompt_token_ids)} tokens; build it from every prompt "
                             f"the engine will see") from None

    def observe(self, prompt_len: int, output_len: int) -> None:
        pass


class CallablePredictor:
    """Any `f(prompt_token_ids) -> expected output tokens` as a LengthPredictor."""

    def __init__(self, fn: Callable[[Sequence[int]], float]) -> None:
        self.fn = fn

    def predict(self, prompt_token_ids: Sequence[int]) -> float:
        value = self.fn(prompt_token_ids)
        if not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
            raise ValueError(f"the length predictor {self.fn!r} returned {value!r}; it must "
                             f"return a positive number of tokens")
        return float(value)

    def observe(self, prompt_len: int, output_len: int) -> None:
        pass


def as_predictor(spec: Any) -> LengthPredictor:
    """None -> a fresh OnlineLengthEstimator; a LengthPredictor as is; an object with only
    predict(), or a callable, wrapped (it does not learn)."""
    if spec is None:
        return OnlineLengthEstimator()
    if isinstance(spec, LengthPredictor):
        return spec
    if callable(getattr(spec, "predict", None)):
        return CallablePredictor(spec.predict)
    if callable(spec):
        return CallablePredictor(spec)
    raise TypeError(f"predictor must be None, an object with predict() and observe(), or a "
                    f"callable prompt_token_ids -> tokens; got {type(spec).__name__}")
