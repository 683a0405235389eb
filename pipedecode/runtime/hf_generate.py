"""transformers-style `generate` served by the executor: what `pipedecode.compile` uses on a GPU.

Owns `ExecutorGenerate`, a callable that takes the arguments a transformers user passes to
`model.generate` (left-padded `input_ids`, `attention_mask`, `max_new_tokens`, greedy settings),
plans the batch, runs the executor (interleaved where the plan and a measurement say it pays,
sequential otherwise) and returns what transformers would: the prompt ids followed by the new
tokens, rows that reached EOS padded after it. Anything it does not serve (sampling, beams,
streamers, logits processors) returns None so the caller falls back to transformers' own loop.
Weights are packed once per model and kept, checked against the model's parameters at each call
(repacked where they changed in place, packed anew where a parameter was replaced); the executor
of the last call is kept and reused when the next call plans the same way for as many requests
of no longer context, on the same packed weights. Prompts are prefilled in batched transformers
forwards (bounded in tokens), their K/V copied into the executor's cache.
"""

from __future__ import annotations

from typing import Any

import torch

# Keyword arguments of generate() that the executor path honours; others send the call back.
CONTEXT_STEP = 256      # executor cache lengths are multiples of this
PREFILL_TOKENS = 32768  # padded prompt tokens per transformers prefill forward
_SERVED = {"attention_mask", "max_new_tokens", "min_new_tokens", "do_sample", "num_beams",
           "pad_token_id", "eos_token_id", "use_cache", "return_dict_in_generate"}


class ExecutorGenerate:
    """`generate` for one transformers model through pipedecode's executor (GPU only)."""

    def __init__(self, model: torch.nn.Module, *, device: Any = None,
                 cuda_only: bool = True) -> None:
        """device: the profile to plan for (name, JSON path or DeviceProfile; None: the GPU this
        runs on, see `engine.plan_for`). cuda_only=False also serves CPU tensors (tests)."""
        self.model, self.device, self.cuda_only = model, device, cuda_only
        self._packing = None              # weights.Packing of the model's parameters
        self.last_executor = None         # the executor of the latest call (mode, fallback)
        self.last_result = None           # its GenerationResult (decode_seconds, tokens_per_s)

    def release(self) -> None:
        """Drop the kept executor (its KV cache, graphs) and the packed weights; the next call
        sets them up again."""
        self.last_executor = self.last_result = self._packing = None

    def refresh(self) -> None:
        """Repack the model's weights now, whatever their version counters say (each call
        already repacks what changed in place or was replaced)."""
        from pipedecode.runtime.weights import hf_packing, hf_sources

        if self._packing is None:
            self._packing = hf_packing(self.model)
        else:
            self._packing.refresh(self._packing.sources_of(hf_sources(self.model)))

    def _weights(self):
        """The model's packed weights as they are now; the kept executor is dropped where they
        were packed anew (it reads the old tensors)."""
        from pipedecode.runtime.weights import hf_packing, hf_sources

        if self._packing is None:
            self._packing = hf_packing(self.model)
        weights = self._packing.current(self._packing.sources_of(hf_sources(self.model)))
        if self.last_executor is not None and self.last_executor.step.weights is not weights:
            self.last_executor = None
        return weights

    def _served(self, input_ids: Any, kwargs: dict[str, Any]) -> bool:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            return False
        if set(kwargs) - _SERVED or kwargs.get("return_dict_in_generate"):
            return False
        config = self.model.generation_config
        sample = kwargs.get("do_sample", config.do_sample) or False    # None: unset, greedy
        beams = kwargs.get("num_beams", config.num_beams) or 1
        if kwargs.get("min_new_tokens") and self._eos(kwargs):
            return False                  # transformers masks EOS logits; the executor does not
        return (input_ids.is_cuda or not self.cuda_only) and not sample and beams == 1 and \
            kwargs.get("max_new_tokens") is not None

    def __call__(self, input_ids: Any = None, **kwargs: Any) -> torch.Tensor | None:
        if not self._served(input_ids, kwargs):
            return None
        from pipedecode.runtime.engine import build_executor, generate, plan_for, reusable

        new_tokens = int(kwargs["max_new_tokens"])
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        prompts = [ids[m.bool()] for ids, m in zip(input_ids, mask)]
        longest = max(int(p.numel()) for p in prompts)
        weights = self._weights()
        # Rounded up so that calls of similar lengths share one executor (buffers, graphs).
        max_context = -(-(longest + new_tokens + 1) // CONTEXT_STEP) * CONTEXT_STEP
        lens = [int(p.numel()) + new_tokens for p in prompts]
        schedule, reason = plan_for(weights, lens, self.device)
        if not reusable(self.last_executor, schedule, len(prompts), max_context):
            self.last_executor = None          # free the old KV cache before the new one
            if input_ids.is_cuda:
                torch.cuda.empty_cache()
            self.last_executor = build_executor(weights, batch_size=len(prompts),
                                                max_context=max_context, schedule=schedule)
            self.last_executor.fallback_reason = self.last_executor.fallback_reason or reason
        result = generate(self.last_executor, prompts, new_tokens, prefill=self._prefill)
        self.last_result = result
        tokens = result.tokens.to(input_ids.device)
        tokens = _pad_after_eos(tokens, self._eos(kwargs), self._pad(kwargs))
        return torch.cat([input_ids, tokens], dim=1)

    @torch.no_grad()
    def _prefill(self, step, rows_prompts) -> torch.Tensor:
        """The prompts in batched transformers forwards of at most PREFILL_TOKENS padded tokens
        each (left-padded), K/V copied into the rows: a bounded transformers cache beside the
        executor's, not a second copy of the whole batch's."""
        longest = max(int(p.numel()) for _, p in rows_prompts)
        per_chunk = max(1, PREFILL_TOKENS // longest)
        return torch.cat([self._prefill_chunk(step, rows_prompts[i:i + per_chunk])
                          for i in range(0, len(rows_prompts), per_chunk)])

    def _prefill_chunk(self, step, rows_prompts) -> torch.Tensor:
        from transformers import DynamicCache

        longest = max(int(p.numel()) for _, p in rows_prompts)
        device = rows_prompts[0][1].device
        ids = torch.zeros(len(rows_prompts), longest, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, (_, prompt) in enumerate(rows_prompts):
            ids[i, longest - prompt.numel():], mask[i, longest - prompt.numel():] = prompt, 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         past_key_values=DynamicCache(config=self.model.config), use_cache=True,
                         logits_to_keep=1)
        for layer, cached in enumerate(out.past_key_values.layers):
            for i, (row, prompt) in enumerate(rows_prompts):
                n = int(prompt.numel())            # [kv_heads, n, head_dim], real tokens only
                step.k_cache[layer][row, :, :n] = cached.keys[i, :, longest - n:]
                step.v_cache[layer][row, :, :n] = cached.values[i, :, longest - n:]
        return out.logits[:, -1]

    def _eos(self, kwargs: dict[str, Any]) -> list[int]:
        eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def _pad(self, kwargs: dict[str, Any]) -> int:
        pad = kwargs.get("pad_token_id", self.model.generation_config.pad_token_id)
        eos = self._eos(kwargs)
        return pad if pad is not None else (eos[0] if eos else 0)


def _pad_after_eos(tokens: torch.Tensor, eos: list[int], pad: int) -> torch.Tensor:
    """What transformers returns: after a row's first EOS only padding; stop once all are done."""
    if not eos:
        return tokens
    is_eos = torch.isin(tokens, torch.tensor(eos, device=tokens.device))
    finished_before = (is_eos.cumsum(1) - is_eos.long()) > 0   # strictly after the first EOS
    tokens = tokens.masked_fill(finished_before, pad)
    done = is_eos.cumsum(1) > 0
    all_done = done.all(0).nonzero()
    return tokens[:, :int(all_done[0]) + 1] if all_done.numel() else tokens
