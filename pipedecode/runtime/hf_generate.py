"""transformers-style `generate` served by the executor: what `pipedecode.compile` uses on a GPU.

Owns `ExecutorGenerate`, a callable that takes the arguments a transformers user passes to
`model.generate` (left-padded `input_ids`, `attention_mask`, `max_new_tokens`, greedy settings),
plans the batch, runs the executor (interleaved where the plan and a measurement say it pays,
sequential otherwise) and returns what transformers would: the prompt ids followed by the new
tokens, rows that reached EOS padded after it. Anything it does not serve (sampling, beams,
streamers, logits processors) returns None so the caller falls back to transformers' own loop.
Weights are packed once per model and kept.
"""

from __future__ import annotations

from typing import Any

import torch

# Keyword arguments of generate() that the executor path honours; others send the call back.
_SERVED = {"attention_mask", "max_new_tokens", "min_new_tokens", "do_sample", "num_beams",
           "pad_token_id", "eos_token_id", "use_cache", "return_dict_in_generate"}


class ExecutorGenerate:
    """`generate` for one transformers model through pipedecode's executor (GPU only)."""

    def __init__(self, model: torch.nn.Module, *, device: Any = "h100",
                 cuda_only: bool = True) -> None:
        """device: the profile to plan for. cuda_only=False also serves CPU tensors (tests)."""
        self.model, self.device, self.cuda_only = model, device, cuda_only
        self._weights = None
        self.last_executor = None         # the executor of the latest call (mode, fallback)

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
        from pipedecode.runtime.engine import generate, plan_and_build
        from pipedecode.runtime.weights import pack_hf_model

        new_tokens = int(kwargs["max_new_tokens"])
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        prompts = [ids[m.bool()] for ids, m in zip(input_ids, mask)]
        longest = max(int(p.numel()) for p in prompts)
        if self._weights is None:
            self._weights = pack_hf_model(self.model)
        max_context = longest + new_tokens + 1
        executor = plan_and_build(self._weights, context_lens=[p.numel() + new_tokens
                                                              for p in prompts],
                                  max_context=max_context, device=self.device)
        self.last_executor = executor
        result = generate(executor, prompts, new_tokens)
        tokens = result.tokens.to(input_ids.device)
        tokens = _pad_after_eos(tokens, self._eos(kwargs), self._pad(kwargs))
        return torch.cat([input_ids, tokens], dim=1)

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
