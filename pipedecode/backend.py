"""The `torch.compile` backend: classify a Dynamo graph, split it into stages, run them.

`pipedecode_backend` is registered once, through the `torch_dynamo_backends` entry point
(`torch.compile(model, backend="pipedecode")`); `pipedecode.compile` calls the same function.
Graphs without decoder layers (a piece left by a graph break) pass through as `gm.forward`.
`make_executor` is the one seam where a CUDA executor will take over from the sequential CPU
runner. Knows nothing of the planner or of SM partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx

from pipedecode.errors import PipedecodeError
from pipedecode.profiles.schema import DeviceProfile

DEFAULT_DEVICE = "h100"


def resolve_device(device: str | DeviceProfile) -> DeviceProfile:
    """A DeviceProfile from a profile object, a built-in name ("h100", ...) or a JSON path."""
    if isinstance(device, DeviceProfile):
        return device
    from pipedecode.profiles import load_profile   # lazy: keeps the backend import light

    return load_profile(device)


@dataclass(frozen=True)
class BackendOptions:
    """What the backend needs besides the graph. `record` collects each StagedGraph built."""

    device: DeviceProfile
    context_len: int | None = None
    record: list | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "BackendOptions":
        options = dict(options or {})
        unknown = set(options) - {"device", "context_len", "record"}
        if unknown:
            raise PipedecodeError(f"unknown pipedecode backend option(s) {sorted(unknown)}; "
                                  f"known: device, context_len, record")
        context_len = options.get("context_len")
        if context_len is not None and (not isinstance(context_len, int) or context_len <= 0):
            raise PipedecodeError(f"context_len must be a positive integer, got {context_len!r}")
        return cls(device=resolve_device(options.get("device", DEFAULT_DEVICE)),
                   context_len=context_len, record=options.get("record"))


def make_executor(staged, example_inputs) -> Callable:
    """The runner for a StagedGraph: today its stages in schedule order on one stream.

    Seam for the GPU executor: when `example_inputs` live on CUDA, the runtime's executor (SM
    partitions, micro-batches) will be returned here instead. Until then every device runs the
    stages sequentially, which is exact.
    """
    return staged


def compile_graph(gm: torch.fx.GraphModule, example_inputs, options: BackendOptions) -> Callable:
    """Classify and partition `gm`; return a callable with gm's calling convention."""
    from pipedecode.passes.classify import classify, has_decoder_layers
    from pipedecode.passes.partition import partition

    if not has_decoder_layers(gm):
        return gm.forward
    classify(gm, options.device, context_len=options.context_len)
    staged = partition(gm)
    if options.record is not None:
        options.record.append(staged)
    return make_executor(staged, example_inputs)


def pipedecode_backend(gm: torch.fx.GraphModule, example_inputs, *,
                       options: dict[str, Any] | None = None) -> Callable:
    """torch.compile backend. options: device (name, path or DeviceProfile; default "h100"),
    context_len (live KV length for the cost annotations), record (a list to append stages to)."""
    return compile_graph(gm, example_inputs, BackendOptions.from_dict(options))
