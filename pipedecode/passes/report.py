"""The analysis report: stages and nodes of a decode step with FLOPs, bytes, intensity, bound.

Owns `analyze_model` (capture a meta-device model, classify, partition), the JSON form of its
result (`version` 2: module paths in the model's own names, and `layer_kinds`, the decoder
layers grouped by identical stages), and the text `pipedecode analyze` prints: one summary
table per layer kind plus the prologue and the head, the node list on request. Knows nothing
of the planner or of running anything.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pipedecode.errors import WorkloadError
from pipedecode.models import check_positions, gib
from pipedecode.passes.capture import (capture_decode, capture_prefill, check_workload,
                                       meta_model)
from pipedecode.passes.classify import META_KEY, classify, module_fqn
from pipedecode.passes.partition import StagedGraph, partition
from pipedecode.profiles.schema import DeviceProfile

REPORT_VERSION = 2
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SEGMENT_TITLES = {"prologue": "before the layers (embedding, RoPE tables, mask)",
                  "epilogue": "after the layers (the head: final norm, lm_head)"}


def module_path(node: torch.fx.Node) -> str:
    """'self_attn.q_proj' for a node inside model.layers.<i>.self_attn.q_proj; '' if none."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = module_fqn(list(stack.values())[-1][0])
    head, sep, tail = path.partition("layers.")
    return tail.partition(".")[2] if sep else path


def module_name(node: torch.fx.Node, names: frozenset[str]) -> str:
    """The node's innermost module in the model's own names ('model.layers.0.self_attn.q_proj');
    '' for the model itself.

    Dynamo names a module by the source it was reached from ("L['self'].model.layers[0]",
    "L['args'][0].model.layers.0" ...); the model's name is the longest suffix of that path
    that `names` (the model's `named_modules()`) holds."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    parts = module_fqn(list(stack.values())[-1][0]).split(".")
    for start in range(len(parts)):
        if ".".join(parts[start:]) in names:
            return ".".join(parts[start:])
    return ""


def staged_report(staged: StagedGraph, *, model: str, device: DeviceProfile, batch_size: int,
                  context_len: int, dtype: str, phase: str = "decode",
                  module_names: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON-ready report of a classified, partitioned graph; `module_names`: the model's
    `named_modules()` names, for the node modules."""
    nodes = {n.name: n for n in staged.original.graph.nodes}
    stages = []
    for stage in staged.stages:
        rows = []
        for name in stage.node_names:
            info = nodes[name].meta[META_KEY]
            rows.append({"name": name, "module": module_name(nodes[name], module_names),
                         **info.to_dict()})
        stages.append({"index": stage.index, "segment": stage.segment, "layer": stage.layer,
                       "bound": stage.bound, "flops": stage.flops,
                       "bytes_moved": stage.bytes_moved,
                       "intensity_flops_per_byte": stage.intensity_flops_per_byte,
                       "ops": stage_ops(rows), "nodes": rows})
    return {"version": REPORT_VERSION, "model": model, "phase": phase, "device": device.name,
            "device_source": device.source,
            "ridge_flops_per_byte": device.ridge_flops_per_byte, "batch_size": batch_size,
            "context_len": context_len, "dtype": dtype, "num_layers": staged.num_layers,
            "total_flops": sum(s.flops for s in staged.stages),
            "total_bytes_moved": sum(s.bytes_moved for s in staged.stages), "stages": stages,
            "layer_kinds": layer_kinds(stages)}


def stage_ops(rows: list[dict[str, Any]]) -> list[str]:
    """What a stage does, in order: its modules inside the layer (or model), attention and KV
    writes by role, free layout ops left out ('self_attn.q_proj', 'attention', ...)."""
    def local(row: dict[str, Any]) -> str:
        if row["layer"] is None:
            return row["module"]
        return row["module"].partition(f"layers.{row['layer']}")[2].lstrip(".")

    rows = [r for r in rows if r["flops"] or r["bytes_moved"]]
    modules = {local(r) for r in rows}
    ops: list[str] = []
    for row in rows:
        module = local(row)
        if row["role"] in ("attention", "kv_write"):
            label = row["role"]
        elif not module:
            label = "residual add" if row["layer"] is not None else "elementwise"
        elif any(m.startswith(module + ".") for m in modules):
            label = f"{module} elementwise"     # in a container's own forward (RoPE, SiLU * up)
        else:
            label = module
        if label not in ops:
            ops.append(label)
    return ops


def layer_kinds(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decoder layers grouped by identical stages (bound, FLOPs, bytes, ops): a Llama has one
    kind. Each kind: its layers and the stages of one of them."""
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for stage in stages:
        if stage["layer"] is not None:
            by_layer.setdefault(stage["layer"], []).append(stage)
    kinds: dict[tuple, dict[str, Any]] = {}
    for layer, own in sorted(by_layer.items()):
        rows = [{key: s[key] for key in ("bound", "flops", "bytes_moved",
                                         "intensity_flops_per_byte", "ops")} for s in own]
        key = tuple((r["bound"], r["flops"], r["bytes_moved"], tuple(r["ops"])) for r in rows)
        kinds.setdefault(key, {"layers": [], "stages": rows})["layers"].append(layer)
    return list(kinds.values())


def _check_size(spec: Any, device: DeviceProfile, batch_size: int, context_len: int,
                dtype: str) -> None:
    """A step whose KV cache could not fit the device is refused before anything is built;
    so is a context beyond the model's positions."""
    from dataclasses import replace

    from pipedecode.models import model_shape

    check_positions(spec, context_len, f"context {context_len}")
    shape = replace(model_shape(spec), dtype_bytes=DTYPES[dtype].itemsize)
    kv = batch_size * context_len * shape.kv_bytes_per_token()
    if kv > device.memory_bytes:
        limit = device.memory_bytes // (context_len * shape.kv_bytes_per_token())
        raise WorkloadError(f"the KV cache of batch {batch_size} x context {context_len} "
                            f"({gib(kv)}) exceeds the {gib(device.memory_bytes)} of "
                            f"{device.name}; at this context at most {limit:,} sequences fit")


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
    _check_size(spec, device, batch_size, context_len, dtype)
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
                         context_len=context_len, dtype=dtype, phase=phase,
                         module_names=frozenset(n for n, _ in model.named_modules()))


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _row(label: str, bound: str, flops: float, bytes_moved: float, ops: str) -> str:
    intensity = flops / bytes_moved if bytes_moved else 0.0
    return (f"  {label:<7} {bound:<8} {_si(flops, 'F'):>11} {_si(bytes_moved, 'B'):>11} "
            f"{intensity:>9.2f}  {ops}")


def _layers_text(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    return "layers " + ",".join(map(str, layers))


def format_summary(report: dict[str, Any]) -> str:
    """One table per decoder-layer kind (its stages), then the prologue and the head."""
    source = "measured profile" if report.get("device_source") == "measured" else \
        "analytic profile, never measured"
    header = f"  {'stage':<7} {'bound':<8} {'FLOPs':>11} {'bytes':>11} {'FLOP/B':>9}  ops"
    lines = [f"{report['model']} {report['phase']} step on {report['device']} ({source}; ridge "
             f"{report['ridge_flops_per_byte']:.1f} FLOP/B), batch {report['batch_size']}, "
             f"context {report['context_len']}, {report['dtype']}"]
    for kind in report["layer_kinds"]:
        lines += ["", f"decoder layer, {_layers_text(kind['layers'])} "
                      f"({len(kind['layers'])} alike), per layer:", header]
        for i, stage in enumerate(kind["stages"], 1):
            lines.append(_row(str(i), stage["bound"], stage["flops"], stage["bytes_moved"],
                              ", ".join(stage["ops"])))
        lines.append(_row("layer", "-", sum(s["flops"] for s in kind["stages"]),
                          sum(s["bytes_moved"] for s in kind["stages"]), ""))
    for segment, title in SEGMENT_TITLES.items():
        own = [s for s in report["stages"] if s["segment"] == segment]
        if own:
            lines += ["", f"{title}:", header]
            lines += [_row(str(i), s["bound"], s["flops"], s["bytes_moved"], ", ".join(s["ops"]))
                      for i, s in enumerate(own, 1)]
    lines += ["", f"whole step: {_si(report['total_flops'], 'F')}, "
                  f"{_si(report['total_bytes_moved'], 'B')}, {len(report['stages'])} stages over "
                  f"{report['num_layers']} layers"]
    return "\n".join(lines)


def format_nodes(report: dict[str, Any], *, all_nodes: bool = False) -> str:
    """Every stage and its nodes (free layout ops only with `all_nodes`)."""
    lines = [f"{'stage / node':<48} {'role':<12} {'FLOPs':>11} {'bytes':>11} {'FLOP/B':>9}  bound"]
    segment = None
    for stage in report["stages"]:
        if stage["segment"] != segment:
            segment = stage["segment"]
            lines.append(f"-- {segment}")
        lines.append(f"  stage {stage['index']:<3} [{stage['bound']}] {'':<43} "
                     f"{_si(stage['flops'], 'F'):>11} {_si(stage['bytes_moved'], 'B'):>11} "
                     f"{stage['intensity_flops_per_byte']:>9.2f}  {stage['bound']}")
        for node in stage["nodes"]:
            if not all_nodes and node["flops"] == 0 and node["bytes_moved"] == 0:
                continue
            label = f"{node['name']} {node['module']}".strip()
            lines.append(f"    {label:<44} {node['role']:<12} {_si(node['flops'], 'F'):>11} "
                         f"{_si(node['bytes_moved'], 'B'):>11} "
                         f"{node['intensity_flops_per_byte']:>9.2f}  {node['bound']}")
    return "\n".join(lines)


def format_table(report: dict[str, Any], *, nodes: bool = False, all_nodes: bool = False) -> str:
    """The summary; with `nodes` (or `all_nodes`, which adds layout ops) the node list too."""
    text = format_summary(report)
    if nodes or all_nodes:
        text += "\n\n" + format_nodes(report, all_nodes=all_nodes)
    return text
