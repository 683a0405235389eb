"""transformers-style `generate` served by the engine: what `pipedecode.compile` uses on a GPU.

Owns `ExecutorGenerate`, a callable that takes the arguments a transformers user passes to
`model.generate` (left-padded `input_ids`, `attention_mask`, `max_new_tokens`, greedy settings),
runs the requests through the engine (`pipedecode.engine.LLM` on the paged model runner:
continuous batching, prefill in varlen batches, decode steps on CUDA graphs, interleaved where
the plan and a measurement say it pays) and returns what transformers would: the prompt ids
followed by the new tokens, rows that reached EOS padded after it, the batch cut once every
row is done. Anything it does not serve (sampling, beams, streamers, logits processors,
`min_new_tokens` with an EOS, prompt + new tokens beyond the model's positions) returns None
so the caller falls back to transformers' own loop.

One LLM is kept per model and reused by every call it can hold: its KV pool is sized for the
call that built it (each of `seats` requests at `tokens_per_request`, rounded up to
CONTEXT_STEP so that calls of similar lengths share it) and it is built anew only for a call
with more requests or longer ones. Before each call the packed weights are checked against the
model's parameters (repacked in place where they changed in place; the LLM built anew where a
parameter was replaced, since its runner reads the old tensors).
"""

from __future__ import annotations

from typing import Any

import torch

CONTEXT_STEP = 256      # a kept LLM holds requests of a multiple of this many tokens
PREFILL_TOKENS = 8192   # prompt tokens per prefill batch
_SERVED = {"attention_mask", "max_new_tokens", "min_new_tokens", "do_sample", "num_beams",
           "pad_token_id", "eos_token_id", "use_cache", "return_dict_in_generate"}


class ExecutorGenerate:
    """`generate` for one transformers model through pipedecode's engine (GPU only)."""

    def __init__(self, model: torch.nn.Module, *, device: Any = None,
                 cuda_only: bool = True) -> None:
        """device: the profile the runner plans for (name, JSON path or DeviceProfile; None:
        the GPU this runs on). cuda_only=False also serves CPU tensors (tests)."""
        self.model, self.device, self.cuda_only = model, device, cuda_only
        self.llm = None                   # the engine of the latest call
        self.last_stats = None            # its GenerateStats (decode_s, tokens, preemptions)
        self._holds: tuple[int, int] = (0, 0)   # (seats, tokens per request) of self.llm

    @property
    def last_executor(self):
        """The executor of the latest call's last decode step (its mode, fallback reason)."""
        return None if self.llm is None else self.llm.runner.last_executor

    def release(self) -> None:
        """Drop the kept LLM (its KV cache, buffers, graphs, packed weights); the next call
        sets them up again."""
        self.llm = self.last_stats = None
        self._holds = (0, 0)

    def refresh(self) -> None:
        """Repack the model's weights now, whatever their version counters say (each call
        already repacks what changed in place or was replaced)."""
        if self.llm is not None:
            from pipedecode.runtime.weights import hf_sources

            packing = self.llm.runner.packing
            if packing.refresh(packing.sources_of(hf_sources(self.model))) \
                    is not self.llm.runner.weights:
                self.release()

    def _served(self, input_ids: Any, kwargs: dict[str, Any]) -> bool:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            return False
        if set(kwargs) - _SERVED or kwargs.get("return_dict_in_generate"):
            return False
        config = self.model.generation_config
        sample = kwargs.get("do_sample", config.do_sample) or False    # None: unset, greedy
        beams = kwargs.get("num_beams", config.num_beams) or 1
        if kwargs.get("min_new_tokens") and self._eos(kwargs):
            return False                  # transformers masks EOS logits; the engine does not
        new = kwargs.get("max_new_tokens")
        if new is None or input_ids.shape[1] + int(new) > \
                self.model.config.max_position_embeddings:
            return False
        return (input_ids.is_cuda or not self.cuda_only) and not sample and beams == 1

    def __call__(self, input_ids: Any = None, **kwargs: Any) -> torch.Tensor | None:
        if not self._served(input_ids, kwargs):
            return None
        from pipedecode.engine.params import SamplingParams

        new_tokens = int(kwargs["max_new_tokens"])
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        prompts = [ids[m.bool()].tolist() for ids, m in zip(input_ids, mask)]
        eos = self._eos(kwargs)
        llm = self._llm(len(prompts), max(map(len, prompts)) + new_tokens)
        params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True,
                                stop_token_ids=tuple(eos))
        outputs = llm.generate(prompts, params, use_tqdm=False)
        self.last_stats = llm.last_stats
        rows = [list(o.outputs[0].token_ids) for o in outputs]
        tokens = as_transformers(rows, self._pad(kwargs)).to(input_ids.device)
        return torch.cat([input_ids, tokens], dim=1)

    def _llm(self, requests: int, tokens: int):
        """The kept LLM if it holds `requests` of `tokens` each and its weights are current;
        else a new one sized for them."""
        seats = 1 << (requests - 1).bit_length()
        per_request = -(-tokens // CONTEXT_STEP) * CONTEXT_STEP
        if self.llm is not None and not self.llm.runner.sync_weights():
            self.release()                # a parameter was replaced: pack anew
        if self.llm is not None and self._holds[0] >= seats and self._holds[1] >= per_request:
            return self.llm
        from pipedecode.engine.llm import LLM
        from pipedecode.models import model_shape
        from pipedecode.runtime.kv_cache import PagedKVCache
        from pipedecode.runtime.model_runner import PagedModelRunner

        self.release()                    # the old pool goes before the new one comes
        if next(self.model.parameters()).is_cuda:
            torch.cuda.empty_cache()
        block_size = 16
        weight = next(self.model.parameters())
        per_block = PagedKVCache.bytes_per_block(model_shape(self.model), block_size,
                                                 weight.dtype)
        blocks = 1 + seats * -(-per_request // block_size)
        self.llm = LLM(self.model, device=self.device, policy="prefill-first",
                       max_num_seqs=seats, max_num_batched_tokens=PREFILL_TOKENS,
                       kv_cache_memory=blocks * per_block, block_size=block_size,
                       runner=PagedModelRunner)
        self._holds = (seats, per_request)
        return self.llm

    def _eos(self, kwargs: dict[str, Any]) -> list[int]:
        eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def _pad(self, kwargs: dict[str, Any]) -> int:
        pad = kwargs.get("pad_token_id", self.model.generation_config.pad_token_id)
        eos = self._eos(kwargs)
        return pad if pad is not None else (eos[0] if eos else 0)


def as_transformers(rows: list[list[int]], pad: int) -> torch.Tensor:
    """New tokens [batch, longest row] int64 as transformers returns them: each row's tokens
    (through its EOS where it stopped at one), then `pad`; the batch ends with its longest row
    (transformers stops once every row is done)."""
    longest = max(map(len, rows))
    out = torch.full((len(rows), longest), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out
