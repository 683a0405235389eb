"""What `LLM(model, ...)` is given, made concrete: the model, its tokenizer, the device profile.

Owns the accepted forms of a model (a transformers module, a preset with random weights, a
local directory, a hub id), finding a tokenizer (and saying why there is none) and choosing
the device profile. Knows nothing of scheduling or running.
"""

from __future__ import annotations

from typing import Any

import torch

from pipedecode.models import PRESETS, build_model, check_model, load_model



def _torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_and_tokenizer(spec: Any, tokenizer: Any, dtype: torch.dtype | None,
                             seed: int, *, device: str | torch.device | None = None
                             ) -> tuple[torch.nn.Module, Any, str]:
    """(model in eval mode, tokenizer or None, why there is no tokenizer). device: where a
    model built or loaded here goes (default the GPU, else the CPU; a pipeline stage builds
    on the CPU and keeps its layers); the default dtype follows the GPU's presence."""
    dtype = dtype or (torch.bfloat16 if _torch_device().type == "cuda" else torch.float32)
    where = torch.device(device) if device is not None else _torch_device()
    if isinstance(spec, torch.nn.Module):
        check_model(spec)
        model, why = spec.eval(), ("the model was given as an object; pass LLM(model, "
                                   "tokenizer=...)")
    elif isinstance(spec, str) and spec in PRESETS:
        model = build_model(spec, dtype=dtype, seed=seed).to(where)
        why = (f"the preset {spec!r} has random weights and no tokenizer; pass token-id "
               f"lists, or LLM(..., tokenizer=...)")
    elif isinstance(spec, str):
        model = load_model(spec, dtype=dtype).to(where)
        why = ""
        if tokenizer is None:
            tokenizer, why = _tokenizer_of(spec)
    else:
        raise TypeError(f"LLM(model): a transformers model, a preset name, a local directory "
                        f"or a hub id; got {type(spec).__name__}")
    if isinstance(tokenizer, str):
        tokenizer, why = _tokenizer_of(tokenizer)
        if tokenizer is None:
            raise ValueError(f"LLM(tokenizer=...): {why}")
    return model, tokenizer, why


def _tokenizer_of(name: str) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name), ""
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"no tokenizer could be loaded from {name!r} ({first})"
