"""`pipedecode.compile(model, ...)`: a Llama-family model that decodes through pipedecode stages.

The returned model shares the original's weights and modules; only its `forward` (compiled by
TorchDynamo with the pipedecode backend, the same path as `torch.compile(model,
backend="pipedecode")`) and its generation config (static KV cache, so the decode step has one
shape and the cache tensors are graph inputs) differ. The original model is left untouched.
Knows nothing of how graphs are classified or split (backend.py, passes/) or of how the
engine serves greedy `generate` (runtime/hf_generate.py).
"""

from __future__ import annotations

import copy
import functools

import torch

from pipedecode.backend import DEFAULT_DEVICE, BackendOptions, pipedecode_backend
from pipedecode.models import check_model
from pipedecode.profiles.schema import DeviceProfile


def compile(model: torch.nn.Module, *, device: str | DeviceProfile | None = DEFAULT_DEVICE,
            context_len: int | None = None, dynamic: bool | None = None) -> torch.nn.Module:
    """A copy of `model` whose forward runs as pipedecode stages; `generate` works as before.

    device: profile name ("h100", "h200", "a100", "rtx4090"), JSON path or DeviceProfile; it
    decides which stages are compute- and which memory-bound, and what the executor plans for.
    The default None is the profile of the GPU this runs on (measured for h100/h200, else the
    analytic one of its name, else ProfileError saying how to measure one with `pipedecode
    profile`); on a CPU, the h100 profile (for the cost annotations). context_len: the live KV
    length used for the cost annotations (default: the static buffer). dynamic: passed to
    torch.compile; the default None lets Dynamo make a dimension symbolic once it changes (new
    batch or prompt length) instead of recompiling each shape until its recompile limit sends
    calls back to eager. A symbolic graph is classified at the sizes of the call that compiled
    it; dynamic=False keeps one static graph per shape (what a per-batch GPU plan wants).
    Raises UnsupportedModelError for models pipedecode cannot split and ProfileError for an
    unknown device.

    The stages built for each captured graph (prefill and decode) are appended to the returned
    model's `pipedecode_stages` list, in the order Dynamo compiled them, and what runs them to
    `pipedecode_runners` (see BackendOptions). On a GPU, greedy `generate` calls run on the
    engine (`LLM` on the paged model runner: decode steps on the executor, interleaved on SM
    partitions where it pays; `pipedecode_executor.last_executor` says how the last step ran),
    and other calls' decode steps on the executor through the backend
    (runtime/graph_decode.py).
    """
    check_model(model)
    record: list = []
    runners: list = []
    options = BackendOptions.from_dict(
        {"device": device, "context_len": context_len, "record": record, "runners": runners})
    backend = functools.partial(pipedecode_backend, options=_as_dict(options))
    compiled = copy.copy(model)     # shares parameters and submodules with `model`
    compiled.forward = torch.compile(model.forward, backend=backend, dynamic=dynamic)
    config = copy.deepcopy(model.generation_config)
    config.cache_implementation = "static"
    config.disable_compile = True   # the forward is compiled already; no second HF auto-compile
    compiled.generation_config = config
    compiled.pipedecode_stages = record
    compiled.pipedecode_runners = runners
    if next(model.parameters()).is_cuda:
        _serve_generate_with_executor(compiled, model, options.device)
    return compiled


def _serve_generate_with_executor(compiled: torch.nn.Module, model: torch.nn.Module, device, *,
                                  cuda_only: bool = True) -> None:
    """On a GPU, greedy `compiled.generate` runs on the engine (runtime/hf_generate.py); calls
    it does not serve (sampling, beams, ...) go to transformers' loop over the stages. The
    engine reads `model`'s own parameters, not the Dynamo-compiled forward."""
    from pipedecode.runtime.hf_generate import ExecutorGenerate

    serve = ExecutorGenerate(model, device=device, cuda_only=cuda_only)
    staged_generate = compiled.generate

    def generate(input_ids=None, **kwargs):
        out = serve(input_ids, **kwargs)
        return staged_generate(input_ids, **kwargs) if out is None else out

    compiled.generate = generate
    compiled.pipedecode_executor = serve


def _as_dict(options: BackendOptions) -> dict:
    return {"device": options.device, "context_len": options.context_len,
            "record": options.record, "executor": options.executor, "runners": options.runners}
