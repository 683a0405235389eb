"""Helpers of the simulator tests: batches of sequences of given lengths, a fixed-cost executor."""

from __future__ import annotations

import numpy as np

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.scheduler import ScheduledBatch
from pipedecode.engine.sequence import Sequence
from pipedecode.sim.executors import Service


def batch(kind: str, lengths: list[int]) -> ScheduledBatch:
    seqs = tuple(Sequence(i, [5] * n, SamplingParams(max_tokens=4)) for i, n in enumerate(lengths))
    return ScheduledBatch(kind, seqs, (tuple(range(len(seqs))),))


class PerSequenceStages:
    """`stages` equal stages, each taking `us_per_seq` per sequence of any batch, and links that
    take no time: the pipeline of a hand-worked example."""

    def __init__(self, stages: int, us_per_seq: float = 1.0) -> None:
        self.stages, self.us_per_seq = stages, us_per_seq
        self.num_gpus = stages
        self.num_servers = 2 * stages if stages > 1 else 1

    def service(self, b: ScheduledBatch) -> Service:
        d = np.zeros(self.num_servers)
        d[0::2] = self.us_per_seq * len(b.seqs)
        return Service(d, float(d.sum()))
