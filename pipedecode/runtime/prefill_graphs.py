"""Small prefills replayed from CUDA graphs, so that they no longer wait on the host.

An eager prefill launches about 22 kernels per layer, which takes the host 25-28 ms for
Llama-3-8B's 32 layers whatever the batch, while the GPU's own work for a prefill of 16 to
1024 tokens takes 5-24 ms (benchmarks/results/prefill_overhead_h200.md): below about a
thousand tokens a prefill is bound by its launches. Owns `PrefillGraphs`: one graph per
bucket (tokens, prompts), each capturing `prefill_forward` on static inputs padded to its
bucket, captured at its first use and replayed after. Padding: tokens past the batch's are
token 0 at position 0, written to slot 0 (the null block, which no sequence reads); prompts
past the batch's are empty (the prefill attention skips them); their logits rows are
computed and not returned. All buckets share the activations of the largest (their first
rows) and one memory pool, since they never run at once. A prefill of more tokens or
prompts than the largest bucket returns None, and the caller runs it eagerly: its GPU time
then exceeds the launches'.

`capture=False` runs the same padded static-input path without graphs (on a CPU, in tests).
Knows nothing of sequences or scheduling: it takes the runner's prefill arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipedecode.runtime.kv_cache import NULL_BLOCK, PagedKVCache
from pipedecode.runtime.ops import KernelSet
from pipedecode.runtime.prefill import check_inputs, prefill_buffers, prefill_forward
from pipedecode.runtime.runner_plans import bucket_for as smallest_bucket
from pipedecode.runtime.weights import PackedWeights

TOKEN_BUCKETS = (128, 256, 512, 1024)
PROMPT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PAD_SLOT = NULL_BLOCK       # the null block's offset 0: slot 0 whatever the block size


@dataclass(frozen=True)
class PrefillBucket:
    tokens: int
    prompts: int


def capturable(kernels: KernelSet) -> bool:
    """Whether a CUDA graph can capture this kernel set's prefill: the Triton prefill attention
    can; the torch reference reads the prompt bounds back to the host."""
    return "prefill_attention" in kernels.provided


def bucket_for(tokens: int, prompts: int, token_buckets=TOKEN_BUCKETS,
               prompt_buckets=PROMPT_BUCKETS) -> PrefillBucket | None:
    """The smallest bucket holding `tokens` tokens in `prompts` prompts, or None."""
    if tokens < 1 or prompts < 1:
        raise ValueError(f"a prefill needs at least 1 prompt and 1 token, got {prompts} "
                         f"prompts of {tokens} tokens")
    if tokens > token_buckets[-1] or prompts > prompt_buckets[-1]:
        return None
    return PrefillBucket(smallest_bucket(tokens, token_buckets),
                         smallest_bucket(prompts, prompt_buckets))


class PrefillGraphs:
    """See the module docstring. weights: a whole model's (the embedding and the head)."""

    def __init__(self, weights: PackedWeights, cache: PagedKVCache, kernels: KernelSet, *,
                 capture: bool = True, token_buckets: tuple[int, ...] = TOKEN_BUCKETS,
                 prompt_buckets: tuple[int, ...] = PROMPT_BUCKETS) -> None:
        if weights.embed.shape[0] == 0 or weights.lm_head.shape[0] == 0:
            raise ValueError("prefill graphs need a whole model's weights (a pipeline stage "
                             "prefills eagerly)")
        if capture and weights.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {weights.device}")
        if capture and not capturable(kernels):
            raise ValueError(f"the {kernels.name!r} kernel set's prefill attention syncs with "
                             f"the host; a CUDA graph cannot capture it (use triton, cublas "
                             f"or hybrid)")
        self.weights, self.cache, self.kernels, self.capture = weights, cache, kernels, capture
        self.token_buckets = tuple(sorted(token_buckets))
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        tokens, prompts, dev = max(token_buckets), max(prompt_buckets), weights.device
        # zeros: a padded token's attention output is never written, and stays finite
        self.buffers = prefill_buffers(weights, tokens, fill=torch.zeros)
        self.token_ids = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self.slots = torch.full((tokens,), PAD_SLOT, dtype=torch.int64, device=dev)
        self.cu_seqlens = torch.zeros(prompts + 1, dtype=torch.int32, device=dev)
        self.logits_rows = torch.zeros(prompts, dtype=torch.int64, device=dev)
        self.graphs: dict[PrefillBucket, tuple[torch.cuda.CUDAGraph | None, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.replays = 0

    def run(self, ids: np.ndarray, starts: np.ndarray, slots: np.ndarray) -> torch.Tensor | None:
        """Logits [prompts, vocab] of the prefill of token ids int64 [tokens] in prompts
        bounded by starts int32 [prompts + 1] into KV slots int64 [tokens] (the runner's
        `prefill_inputs`), or None where no bucket holds it. The logits are the bucket's
        buffer: read them before the next call."""
        tokens, prompts = int(starts[-1]), len(starts) - 1
        bucket = bucket_for(tokens, prompts, self.token_buckets, self.prompt_buckets)
        if bucket is None:
            return None
        # the eager prefill's checks, on the host arrays: a graph writes where it is told
        check_inputs(self.weights, self.cache, torch.from_numpy(ids), torch.from_numpy(starts),
                     torch.from_numpy(slots))
        self._stage(bucket, ids, starts, slots)
        if bucket not in self.graphs:
            self.graphs[bucket] = self._make(bucket)
        graph, logits = self.graphs[bucket]
        if graph is None:
            logits = self._forward(bucket)
        else:
            graph.replay()
        self.replays += 1
        return logits[:prompts]

    def capture_all(self) -> int:
        """Capture every bucket's graph not captured yet (a warm-up: each costs an eager
        prefill and a capture), on a dummy batch written to the null block; how many."""
        made = 0
        for t in self.token_buckets:
            for p in (p for p in self.prompt_buckets if p <= t):
                bucket = PrefillBucket(t, p)
                if bucket in self.graphs:
                    continue
                starts = (np.arange(p + 1) * (t // p)).astype(np.int32)
                tokens = int(starts[-1])
                self._stage(bucket, np.zeros(tokens, np.int64), starts,
                            np.full(tokens, PAD_SLOT, np.int64))
                self.graphs[bucket] = self._make(bucket)
                made += 1
        return made

    def describe(self) -> dict:
        return {"captured": self.capture, "replays": self.replays,
                "buckets": [f"{b.tokens}x{b.prompts}" for b in sorted(
                    self.graphs, key=lambda b: (b.tokens, b.prompts))],
                "token_buckets": list(self.token_buckets),
                "prompt_buckets": list(self.prompt_buckets)}

    def _stage(self, bucket: PrefillBucket, ids, starts, slots) -> None:
        """The batch's arrays into the static inputs, padded to `bucket`."""
        tokens, prompts = int(starts[-1]), len(starts) - 1
        lens = np.diff(starts).astype(np.int64)
        positions = np.arange(tokens) - np.repeat(starts[:-1].astype(np.int64), lens)
        cu = np.full(bucket.prompts + 1, tokens, dtype=np.int32)
        cu[:prompts + 1] = starts
        rows = np.zeros(bucket.prompts, dtype=np.int64)
        rows[:prompts] = starts[1:].astype(np.int64) - 1
        pad = bucket.tokens - tokens
        host = {self.token_ids: np.concatenate((ids, np.zeros(pad, np.int64))),
                self.positions: np.concatenate((positions, np.zeros(pad, np.int64))),
                self.slots: np.concatenate((slots, np.full(pad, PAD_SLOT, np.int64))),
                self.cu_seqlens: cu, self.logits_rows: rows}
        for static, array in host.items():
            static[:len(array)].copy_(torch.from_numpy(array), non_blocking=False)

    def _forward(self, bucket: PrefillBucket) -> torch.Tensor:
        t, p = bucket.tokens, bucket.prompts
        return prefill_forward(self.weights, self.cache, self.kernels, self.token_ids[:t],
                               self.cu_seqlens[:p + 1], self.slots[:t], self.positions[:t],
                               max_seqlen=t, logits_rows=self.logits_rows[:p],
                               buffers=self.buffers)

    def _make(self, bucket: PrefillBucket) -> tuple[torch.cuda.CUDAGraph | None, torch.Tensor]:
        """(the bucket's graph, its logits buffer); without capture (None, None): `run` then
        runs the padded forward itself."""
        if not self.capture:
            return None, None
        stream = torch.cuda.Stream(device=self.weights.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(bucket)           # warm-up: Triton compiles, cuBLAS picks, off graph
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(bucket)
        return graph, logits                # the capture ran nothing: `run` replays it
