"""The partition mechanism: cut a classified graph into ordered compute and memory stages.

Consecutive call nodes with the same segment (a decoder layer, the prologue or the epilogue)
and the same `stage_bound` form one stage; torch.fx's `split_module` turns each stage into a
submodule `submod_<i>` of a top-level module that calls them in order. Running that module
equals running the original graph, in-place KV-cache writes included. Knows nothing of why a
node is compute- or memory-bound (classify.py decides) nor of streams or SM partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.split_module import split_module

from pipedecode.passes.classify import META_KEY, NodeClass


@dataclass(frozen=True)
class Stage:
    """One contiguous run of nodes that share a segment and a bound."""

    index: int
    name: str               # the submodule name in StagedGraph.module ("submod_<index>")
    segment: str            # "layer.<i>", "prologue" or "epilogue"
    layer: int | None
    bound: str              # "compute" or "memory"
    node_names: tuple[str, ...]
    flops: int
    bytes_moved: int

    @property
    def intensity_flops_per_byte(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0


@dataclass(frozen=True)
class StagedGraph:
    """The split module and its stages in schedule order; calling it runs them in that order."""

    module: torch.fx.GraphModule
    stages: tuple[Stage, ...]
    original: torch.fx.GraphModule

    def __call__(self, *args):
        return self.module(*args)

    def layer_stages(self, layer: int) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.layer == layer)

    @property
    def num_layers(self) -> int:
        return len({s.layer for s in self.stages if s.layer is not None})

    def node_classes(self) -> dict[str, NodeClass]:
        """Node name -> NodeClass, over the original graph."""
        return {n.name: n.meta[META_KEY] for n in self.original.graph.nodes if META_KEY in n.meta}


def stage_ids(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Node name -> stage index: a new stage starts wherever (segment, stage_bound) changes."""
    ids, key, index = {}, None, -1
    for node in gm.graph.nodes:
        info = node.meta.get(META_KEY)
        if info is None:
            continue
        if (info.segment, info.stage_bound) != key:
            key, index = (info.segment, info.stage_bound), index + 1
        ids[node.name] = index
    return ids


def _stage_records(gm: torch.fx.GraphModule, ids: dict[str, int]) -> tuple[Stage, ...]:
    grouped: dict[int, list[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.name in ids:
            grouped.setdefault(ids[node.name], []).append(node)
    stages = []
    for index, nodes in sorted(grouped.items()):
        infos = [n.meta[META_KEY] for n in nodes]
        stages.append(Stage(
            index=index, name=f"submod_{index}", segment=infos[0].segment, layer=infos[0].layer,
            bound=infos[0].stage_bound, node_names=tuple(n.name for n in nodes),
            flops=sum(i.flops for i in infos), bytes_moved=sum(i.bytes_moved for i in infos)))
    return tuple(stages)


def partition(gm: torch.fx.GraphModule) -> StagedGraph:
    """Split a classified graph (see classify.classify) into its stages, in graph order."""
    ids = stage_ids(gm)
    missing = [n.name for n in gm.graph.nodes
               if n.op in ("call_function", "call_method", "call_module") and n.name not in ids]
    if missing:
        raise ValueError(f"partition needs a classified graph; run classify() first "
                         f"(unclassified nodes: {missing[:5]})")
    # get_attr nodes have no class; split_module copies them into the stages that use them.
    split = split_module(gm, gm, lambda node: ids[node.name], keep_original_order=True,
                         keep_original_node_name=True)
    stages = _stage_records(gm, ids)
    called = [n.target for n in split.graph.nodes if n.op == "call_module"]
    if called != [s.name for s in stages]:
        raise RuntimeError(f"split_module reordered the stages: {called}")
    return StagedGraph(module=split, stages=stages, original=gm)
