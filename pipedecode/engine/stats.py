"""What one `generate` call did: token counts, times, preemptions, peak KV; and its progress bar.

Owns `GenerateStats` (filled step by step by `StatsRecorder`) and the tqdm bar showing
requests done and prefill / decode tokens per second. Knows nothing of models or policies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerateStats:
    """Totals of one generate call. prefill_tokens counts recomputed (preempted) tokens too;
    peak_kv_blocks is the most blocks held at once, of kv_blocks usable ones; prefill_batches
    and decode_steps count the runner's calls of each kind."""

    requests: int
    prompt_tokens: int
    output_tokens: int
    prefill_tokens: int
    decode_tokens: int
    prefill_s: float
    decode_s: float
    elapsed_s: float
    preemptions: int
    peak_kv_blocks: int
    kv_blocks: int
    policy: str
    prefill_batches: int = 0
    decode_steps: int = 0

    @property
    def peak_kv_usage(self) -> float:
        return self.peak_kv_blocks / self.kv_blocks if self.kv_blocks else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        return (f"{self.requests} requests, {self.prompt_tokens} prompt + {self.output_tokens} "
                f"output tokens in {self.elapsed_s:.2f} s ({self.output_tokens_per_s:.0f} output "
                f"tok/s, {self.total_tokens_per_s:.0f} total tok/s), policy {self.policy}, "
                f"{self.preemptions} preemptions, peak KV {100 * self.peak_kv_usage:.0f}% "
                f"({self.peak_kv_blocks} of {self.kv_blocks} blocks)")


class StatsRecorder:
    """Accumulates step times and drives the progress bar (None: no bar)."""

    def __init__(self, total_requests: int, use_tqdm: bool) -> None:
        self.start = time.perf_counter()
        self.total = total_requests
        self.prefill_s = self.decode_s = 0.0
        self.prefill_tokens = self.decode_tokens = 0
        self.prefill_batches = self.decode_steps = 0
        self.done = 0
        self.bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_requests, desc="Processed prompts", unit="req",
                            dynamic_ncols=True)

    def step(self, kind: str, tokens: int, seconds: float, finished: int) -> None:
        if kind == "prefill":
            self.prefill_s += seconds
            self.prefill_tokens += tokens
            self.prefill_batches += 1
        else:
            self.decode_s += seconds
            self.decode_tokens += tokens
            self.decode_steps += 1
        self.done += finished
        if self.bar is not None:
            prefill = self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0
            decode = self.decode_tokens / self.decode_s if self.decode_s else 0.0
            self.bar.set_postfix_str(f"prefill {prefill:.0f} tok/s, decode {decode:.0f} tok/s",
                                     refresh=False)
            if finished:
                self.bar.update(finished)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self, *, requests: int, prompt_tokens: int, output_tokens: int, preemptions: int,
               peak_kv_blocks: int, kv_blocks: int, policy: str) -> GenerateStats:
        self.close()
        return GenerateStats(requests, prompt_tokens, output_tokens, self.prefill_tokens,
                             self.decode_tokens, self.prefill_s, self.decode_s,
                             time.perf_counter() - self.start, preemptions, peak_kv_blocks,
                             kv_blocks, policy, self.prefill_batches, self.decode_steps)
