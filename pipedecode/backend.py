"""The `torch.compile` backend: classify a Dynamo graph, split it into stages, run them.

`pipedecode_backend` is registered once, through the `torch_dynamo_backends` entry point
(`torch.compile(model, backend="pipedecode")`); `pipedecode.compile` calls the same function.
Graphs without decoder layers (a piece left by a graph break) pass through as `gm.forward`.
`make_executor` picks the runner: on a GPU, the decode step of a model with transformers'
StaticCache runs on the runtime's executor (planned, interleaved on SM partitions where it pays;
`runtime/graph_decode.py`); every other graph (prefill, CPU tensors, a graph it does not
recognize) runs its stages in order, which is exact; a decode graph that the executor was to run
and cannot says why, once, in a `NotServedWarning`. Knows nothing of the planner or of SM
partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx

from pipedecode.errors import PipedecodeError
from pipedecode.profiles.schema import DeviceProfile

DEFAULT_DEVICE = None     # the profile of the GPU this runs on (h100 on a CPU)


def resolve_device(device: str | DeviceProfile | None) -> DeviceProfile:
    """A DeviceProfile from a profile object, a built-in name ("h100", ...), a JSON path, or None:
    the profile of the GPU this runs on, the h100 profile on a CPU (`registry.resolve_profile`)."""
    if isinstance(device, DeviceProfile):
        return device
    from pipedecode.profiles import resolve_profile   # lazy: keeps the backend import light

    return resolve_profile(device)


@dataclass(frozen=True)
class BackendOptions:
    """What the backend needs besides the graph. `record` collects each StagedGraph built and
    `runners` what runs each one: the StagedGraph, a GraphDecode, or (staged, why not served)."""

    device: DeviceProfile
    context_len: int | None = None
    record: list | None = field(default=None, compare=False)
    executor: str = "auto"     # "auto": decode graphs on CUDA; "always": CPU too; "never"
    runners: list | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "BackendOptions":
        options = dict(options or {})
        unknown = set(options) - {"device", "context_len", "record", "executor",
                                  "runners"}
        if unknown:
            raise PipedecodeError(f"unknown pipedecode backend option(s) {sorted(unknown)}; "
                                  f"known: device, context_len, record, executor, runners")
        executor = options.get("executor", "auto")
        if executor not in ("auto", "always", "never"):
            raise PipedecodeError(f"executor must be 'auto', 'always' or 'never', got "
                                  f"{executor!r}")
        context_len = options.get("context_len")
        if context_len is not None and (not isinstance(context_len, int) or context_len <= 0):
            raise PipedecodeError(f"context_len must be a positive integer, got {context_len!r}")
        return cls(device=resolve_device(options.get("device", DEFAULT_DEVICE)),
                   context_len=context_len, record=options.get("record"),
                   executor=executor, runners=options.get("runners"))


def make_executor(staged, gm: torch.fx.GraphModule, example_inputs,
                  options: BackendOptions) -> Callable:
    """The runner for a StagedGraph: the executor for a recognized decode step on CUDA (or on
    any device with executor="always"), else the stages in order; a decode graph it was to serve
    and cannot says why in a NotServedWarning."""
    on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs)
    if options.executor == "never" or (options.executor == "auto" and not on_cuda):
        return staged
    from pipedecode.runtime.graph_decode import GraphDecode, is_prefill, recognize, \
        warn_not_served

    layout = recognize(gm, example_inputs)
    if isinstance(layout, str):
        if options.runners is not None:
            options.runners.append((staged, layout))
        if not is_prefill(gm):        # a prompt's graph is no decode step: nothing to explain
            warn_not_served(layout)   # once per graph: the backend sees each graph once
        return staged
    return GraphDecode(layout, staged, device=options.device, plan=on_cuda)


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
    runner = make_executor(staged, gm, example_inputs, options)
    if options.runners is not None and runner is not staged:
        options.runners.append(runner)
    return runner


def pipedecode_backend(gm: torch.fx.GraphModule, example_inputs, *,
                       options: dict[str, Any] | None = None) -> Callable:
    """torch.compile backend. options: device (name, path or DeviceProfile; default: the profile
    of the GPU this runs on, h100 on a CPU),
    context_len (live KV length for the cost annotations), record (a list to append the stages
    to), runners (a list to append what runs them, see BackendOptions), executor ("auto":
    decode steps on CUDA run on the executor; "always": on CPU too; "never": stages only)."""
    return compile_graph(gm, example_inputs, BackendOptions.from_dict(options))
