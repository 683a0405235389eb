"""The analysis report: stages and nodes of a decode step with FLOPs, bytes, intensity, bound.

Owns `analyze_model` (capture a meta-device model, classify, partition), the JSON form of its
result (`version` 1) and the text table `pipedecode analyze` prints. Knows nothing of the
planner or of running anything.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pipedecode.passes.capture import (capture_decode, capture_prefill, check_workload,
                                       meta_model)
from pipedecode.passes.classify import META_KEY, classify, module_fqn
from pipedecode.passes.partition import StagedGraph, partition
from pipedecode.profiles.schema import DeviceProfile

REPORT_VERSION = 1
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def module_path(node: torch.fx.Node) -> str:
    """'self_attn.q_proj' for a node inside model.layers.<i>.self_attn.q_proj; '' if none."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = module_fqn(list(stack.values())[-1][0])
    head, sep, tail = path.partition("layers.")
    return tail.partition(".")[2] if sep else path


def staged_report(staged: StagedGraph, *, model: str, device: DeviceProfile, batch_size: int,
                  context_len: int, dtype: str, phase: str = "decode") -> dict[str, Any]:
    """The JSON-ready report of a classified, partitioned graph."""
    nodes = {n.name: n for n in staged.original.graph.nodes}
    stages = []
    for stage in staged.stages:
        rows = []
        for name in stage.node_names:
            info = nodes[name].meta[META_KEY]
            rows.append({"name": name, "module": module_path(nodes[name]), **info.to_dict()})
        stages.append({"index": stage.index, "segment": stage.segment, "layer": stage.layer,
                       "bound": stage.bound, "flops": stage.flops,
                       "bytes_moved": stage.bytes_moved,
                       "intensity_flops_per_byte": stage.intensity_flops_per_byte,
                       "nodes": rows})
    return {"version": REPORT_VERSION, "model": model, "phase": phase, "device": device.name,
            "ridge_flops_per_byte": device.ridge_flops_per_byte, "batch_size": batch_size,
            "context_len": context_len, "dtype": dtype, "num_layers": staged.num_layers,
            "total_flops": sum(s.flops for s in staged.stages),
            "total_bytes_moved": sum(s.bytes_moved for s in staged.stages), "stages": stages}


def analyze_model(spec: Any, device: DeviceProfile, *, batch_size: int, context_len: int,
                  dtype: str = "bfloat16", phase: str = "decode",
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Capture a step of `spec` (preset, path, hub id, config) without weights and report it.

    phase "decode": one new token per sequence with `context_len` tokens cached after it;
    "prefill": a prompt of `context_len` tokens per sequence into an empty cache.
    `progress(step)` is called as each of the steps "build", "capture", "classify", "partition"
    starts (a progress bar's hook; capturing a large model takes tens of seconds).
    """
    progress = progress or (lambda step: None)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
    check_workload(batch_size, context_len)
    progress("build")
    model = meta_model(spec, dtype=DTYPES[dtype])
    progress("capture")
    if phase == "decode":
        captured = capture_decode(model, batch_size=batch_size, context_len=context_len)
    else:
        captured = capture_prefill(model, batch_size=batch_size, prompt_len=context_len)
    progress("classify")
    classify(captured.gm, device, context_len=context_len)
    progress("partition")
    staged = partition(captured.gm)
    name = spec if isinstance(spec, str) else getattr(spec, "name_or_path", "") or "model"
    return staged_report(staged, model=name, device=device, batch_size=batch_size,
                         context_len=context_len, dtype=dtype, phase=phase)


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def format_table(report: dict[str, Any], *, all_nodes: bool = False) -> str:
    """Per-layer text table: one line per stage, then its nodes (free layout ops hidden)."""
    lines = [f"{report['model']} {report['phase']} step on {report['device']} (ridge "
             f"{report['ridge_flops_per_byte']:.1f} FLOP/B), batch {report['batch_size']}, "
             f"context {report['context_len']}, {report['dtype']}",
             f"{'stage / node':<40} {'role':<12} {'FLOPs':>12} {'bytes':>12} "
             f"{'FLOP/B':>9}  bound"]
    segment = None
    for stage in report["stages"]:
        if stage["segment"] != segment:
            segment = stage["segment"]
            lines.append(f"-- {segment}")
        lines.append(f"  stage {stage['index']:<3} [{stage['bound']}] {'':<22} "
                     f"{_si(stage['flops'], 'F'):>12} {_si(stage['bytes_moved'], 'B'):>12} "
                     f"{stage['intensity_flops_per_byte']:>9.2f}  {stage['bound']}")
        for node in stage["nodes"]:
            if not all_nodes and node["flops"] == 0 and node["bytes_moved"] == 0:
                continue
            label = f"{node['name']} {node['module']}".strip()[:36]
            lines.append(f"    {label:<36} {node['role']:<12} {_si(node['flops'], 'F'):>12} "
                         f"{_si(node['bytes_moved'], 'B'):>12} "
                         f"{node['intensity_flops_per_byte']:>9.2f}  {node['bound']}")
    lines.append(f"total {_si(report['total_flops'], 'F')}, {_si(report['total_bytes_moved'], 'B')}"
                 f", {len(report['stages'])} stages over {report['num_layers']} layers")
    return "\n".join(lines)
