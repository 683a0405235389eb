"""What `LLM(..., pipeline_parallel_size=N)` holds: this process's stage of the pipeline.

Owns `start_pipeline` (join torchrun's world, balance the layers, build this rank's stage on
its device, agree the KV pool with the other stages) and `Pipeline`, through which `LLM`
drives a generate call on rank 0 (`run`, `cancel`) and serves it on the other ranks
(`serve`). Every rank runs the same script (torchrun): `LLM(...)` builds each rank's stage,
and each `generate` call on rank 0 is served by the same call on the others, which return no
outputs. After a lost stage the pipeline is broken: later calls say so. Knows nothing of
requests beyond handing the scheduler and sequences to the controller.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from pipedecode.distributed import controller, worker
from pipedecode.distributed.channels import Links
from pipedecode.distributed.launch import PipelineWorld, join_world
from pipedecode.distributed.layout import StageSpec, balanced_layers, stage_specs, stage_weights
from pipedecode.distributed.stage import StageRunner
from pipedecode.engine.runner import RunnerConfig
from pipedecode.errors import PipedecodeError
from pipedecode.models import model_shape

DEFAULT_TIMEOUT_S = 600.0    # per receive: room for every stage's first kernel compiles
_PIPELINES = itertools.count()   # every rank makes its pipelines in the same order


class Pipeline:
    """This rank's stage and its links; see the module docstring."""

    def __init__(self, world: PipelineWorld, specs: tuple[StageSpec, ...], stage: StageRunner,
                 links: Links) -> None:
        self.world, self.specs, self.stage, self.links = world, specs, stage, links
        self.broken: str | None = None

    @property
    def is_driver(self) -> bool:
        return self.world.is_driver

    @property
    def num_stages(self) -> int:
        return len(self.specs)

    @property
    def stage_layers(self) -> tuple[int, ...]:
        return tuple(s.num_layers for s in self.specs)

    def describe(self, stage: int) -> str:
        return self.specs[stage].describe()

    def _check(self) -> None:
        if self.broken:
            raise PipedecodeError(f"the pipeline is broken ({self.broken}); start its "
                                  f"processes again")

    def run(self, scheduler, seqs, recorder) -> None:
        """Rank 0: one generate call's requests, added to `scheduler`, to the end."""
        self._check()
        try:
            controller.drive(self.stage, self.links, scheduler, seqs, recorder, self.describe)
        except BaseException as exc:
            self.broken = str(exc) or type(exc).__name__
            raise

    def cancel(self) -> None:
        """Rank 0: a generate call that runs nothing; the other ranks' calls return."""
        self._check()
        controller.send_end(self.links)

    def serve(self) -> list:
        """Ranks > 0: serve rank 0's generate call; no outputs here."""
        self._check()
        try:
            worker.serve(self.stage, self.links)
        except BaseException as exc:
            self.broken = str(exc) or type(exc).__name__
            raise
        return []


def start_pipeline(model: torch.nn.Module, size: int, config: RunnerConfig, *, seed: int = 0,
                   timeout_s: float = DEFAULT_TIMEOUT_S, **runner_options) -> Pipeline:
    """This process's stage of a `size`-stage pipeline of `model` (see layout.py for where
    its weights come from). runner_options: the paged runner's (kernels, use_graphs,
    planner)."""
    if not timeout_s > 0:
        raise ValueError(f"the pipeline's timeout must be a positive number of seconds, got "
                         f"{timeout_s!r}")
    world = join_world(size)
    shape = model_shape(model)
    if size > shape.num_layers:
        raise PipedecodeError(f"{shape.name} has {shape.num_layers} layers: it cannot fill "
                              f"{size} pipeline stages")
    specs = stage_specs(balanced_layers(shape, config.profile, size, config.max_num_seqs))
    spec = specs[world.rank]
    weights = stage_weights(model, spec, world.device, seed=seed)

    def least(blocks: int) -> int:
        found = torch.tensor([blocks], dtype=torch.int64)
        dist.all_reduce(found, op=dist.ReduceOp.MIN, group=world.control)
        return int(found.item())

    stage = StageRunner(model, config, spec, weights, num_blocks_of=least, **runner_options)
    links = Links(world, f"pipedecode/pipeline/{next(_PIPELINES)}", timeout_s,
                  shape.hidden_size)
    return Pipeline(world, specs, stage, links)
