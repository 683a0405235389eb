"""What a request asks for and what it gets back: SamplingParams, RequestOutput, CompletionOutput.

The shapes follow vLLM's (`SamplingParams(max_tokens=..., temperature=...)`,
`RequestOutput.outputs[0].token_ids`), so code written for vLLM reads the same. Owns validation
of every sampling field (errors name the field). Knows nothing of models, schedulers or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_TOKENS = 16          # vLLM's default, so a bare SamplingParams() means the same
FINISH_REASONS = ("stop", "length", "error")


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"SamplingParams.{name} must be a list of token ids, "
                         f"got {value!r}") from None
    if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in items):
        raise ValueError(f"SamplingParams.{name} must hold non-negative integer token ids, "
                         f"got {list(items)!r}")
    return items


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    try:
        items = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        items = (value,)
    if any(not isinstance(s, str) or not s for s in items):
        raise ValueError(f"SamplingParams.{name} must be a string or a list of non-empty "
                         f"strings, got {value!r}")
    return items


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    max_tokens: most tokens to generate (default 16, vLLM's default; the request finishes with
        reason "length" when it reaches them). Must be positive.
    temperature: 0 is greedy (argmax); > 0 divides the logits before sampling (default 1.0,
        as in vLLM).
    top_p: sample from the smallest set of tokens whose probability reaches top_p (1.0: all).
    top_k: sample from the k most likely tokens (0 or -1: all).
    seed: a per-request random generator, so the tokens are reproducible whatever else is in
        the batch (None: the global torch generator).
    stop_token_ids: tokens that end the request (kept in token_ids), besides the model's EOS.
    stop: strings that end the request; the text is cut before the stop string (needs a
        tokenizer); the token that completed it is kept in token_ids.
    ignore_eos: keep generating past the model's EOS token (benchmarks).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) \
                or self.max_tokens <= 0:
            raise ValueError(f"SamplingParams.max_tokens must be a positive integer, "
                             f"got {self.max_tokens!r}")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 is greedy), "
                             f"got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be a positive integer, or 0 or -1 for "
                             f"all tokens, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or isinstance(self.seed, bool)):
            raise ValueError(f"SamplingParams.seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"SamplingParams.ignore_eos must be true or false, "
                             f"got {self.ignore_eos!r}")
        object.__setattr__(self, "top_k", 0 if self.top_k == -1 else self.top_k)
        object.__setattr__(self, "stop_token_ids", _int_tuple(self.stop_token_ids,
                                                              "stop_token_ids"))
        object.__setattr__(self, "stop", _str_tuple(self.stop, "stop"))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class RequestMetrics:
    """When a request arrived, produced its first token and finished (seconds since the epoch,
    `time.time()`), and how often it was preempted (its KV recomputed)."""

    arrival_time_s: float
    first_token_time_s: float | None
    finish_time_s: float | None
    preemptions: int = 0

    @property
    def time_to_first_token_s(self) -> float | None:
        if self.first_token_time_s is None:
            return None
        return self.first_token_time_s - self.arrival_time_s

    @property
    def latency_s(self) -> float | None:
        return None if self.finish_time_s is None else self.finish_time_s - self.arrival_time_s


@dataclass(frozen=True)
class CompletionOutput:
    """One completion of a request (pipedecode makes one per request, index 0).

    finish_reason: "stop" (EOS, a stop token or a stop string), "length" (max_tokens, or the
    model's or the KV cache's length limit) or "error" (the request was not finished; `error`
    says why). stop_reason: the stop token id or stop string that ended it (None for EOS).
    """

    index: int
    text: str | None
    token_ids: tuple[int, ...]
    finish_reason: str | None
    stop_reason: int | str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"CompletionOutput.finish_reason must be one of {FINISH_REASONS} "
                             f"or None, got {self.finish_reason!r}")

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class RequestOutput:
    """What `LLM.generate` returns for one prompt, in the order the prompts were given.

    finished: the request ended by "stop" or "length" (False for "error")."""

    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    finished: bool
    metrics: RequestMetrics = field(compare=False)
