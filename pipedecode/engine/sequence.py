"""A request's mutable state inside the engine, and when it must stop.

Owns `Sequence` (status, prompt and output token ids, block table, tokens whose KV is computed,
preemptions, predicted output length, timing) and `stop_check`, the one place that decides
whether a new token ends a request. Knows nothing of tensors, blocks beyond their ids, or
policies. What a model runner reads from a sequence: `token_ids` (prefill writes the KV of all
of them), `last_token_id` and `num_computed_tokens` (decode feeds the last token at that
position; its context is `num_computed_tokens + 1` tokens) and `block_table`.
"""

from __future__ import annotations

import enum
from typing import Callable, Sequence as Seq

from pipedecode.engine.params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"        # queued, or preempted (its KV dropped, to be recomputed)
    RUNNING = "running"        # holds blocks; decodes
    FINISHED = "finished"


class Sequence:
    """One request: its tokens so far and where their KV lives (block ids, block 0 never)."""

    def __init__(self, seq_id: int, prompt_token_ids: Seq[int], params: SamplingParams, *,
                 request_id: str | None = None, prompt: str | None = None,
                 arrival_time_s: float = 0.0) -> None:
        self.seq_id = seq_id
        self.request_id = str(seq_id) if request_id is None else request_id
        self.prompt = prompt
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0      # tokens whose KV is in the cache
        self.num_preemptions = 0
        self.predicted_output_len: int | None = None
        self.in_batch: int | None = None  # id of the batch it is in, handed out, not yet back
        self.ready_since = 0              # scheduler step at which it last came back
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.arrival_time_s = arrival_time_s
        self.first_token_time_s: float | None = None
        self.finish_time_s: float | None = None

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id}, {self.status.value}, prompt={self.num_prompt_tokens}, "
                f"output={self.num_output_tokens}, blocks={self.block_table})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def in_flight(self) -> bool:
        return self.in_batch is not None

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def peak_tokens(self) -> int:
        """KV tokens this request holds at its predicted end: prompt + predicted output, or
        what it holds now where it has outgrown the prediction."""
        predicted = self.predicted_output_len or 1
        return max(self.num_tokens, self.num_prompt_tokens + predicted)

    def append(self, token_id: int) -> None:
        """A sampled token; every token before it now has its KV computed."""
        self.num_computed_tokens = len(self.token_ids)
        self.token_ids.append(int(token_id))

    def reset_for_recompute(self) -> None:
        """Preempted: blocks gone, KV to be recomputed from prompt + output on re-admission."""
        self.status = SequenceStatus.WAITING
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_preemptions += 1


def stop_check(seq: Sequence, eos_token_ids: frozenset[int], max_model_len: int,
               detokenize: Callable[[list[int]], str] | None = None
               ) -> tuple[str, int | str | None] | None:
    """(finish_reason, stop_reason) if the token just appended ends `seq`, else None.

    Checked in vLLM's order: EOS (unless ignore_eos), stop token ids, stop strings (through
    `detokenize` of the output so far), max_tokens, then the length limit of the model and
    the KV cache (`max_model_len`, prompt + output)."""
    params, ids = seq.params, seq.token_ids
    token = ids[-1]
    if token in eos_token_ids and not params.ignore_eos:
        return "stop", None
    if params.stop_token_ids and token in params.stop_token_ids:
        return "stop", token
    if params.stop and detokenize is not None:
        found = first_stop_string(detokenize(seq.output_token_ids), params.stop)
        if found is not None:
            return "stop", found[1]
    if len(ids) - seq.num_prompt_tokens >= params.max_tokens or len(ids) >= max_model_len:
        return "length", None
    return None


def first_stop_string(text: str, stops: Seq[str]) -> tuple[int, str] | None:
    """(position, stop string) of the earliest stop string in `text`, or None."""
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits) if hits else None
