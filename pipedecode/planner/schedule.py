"""The Schedule: the one contract between `pipedecode plan` and the runtime, and its JSON.

Owns `Schedule`, `MicroBatch`, `Slot`, `SwitchPoint`, the schema version and validation
(every error names the field; version 1 files, which have no co-resident mode, still load).
Knows nothing of solvers or GPUs; imports no solver, so the runtime can load a schedule on a
machine without PuLP or OR-Tools. docs/schedule-schema.md
documents the JSON form.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from pipedecode.errors import ScheduleError
from pipedecode.models import ModelShape

SCHEDULE_VERSION = 2
READS_VERSIONS = (1, 2)          # version 1: no co-resident mode, attention_smem_bytes, reason
STAGES = ("pre_attn", "attention", "post_attn")
PARTITIONS = ("memory", "compute", "all")
MODES = ("interleaved", "coresident", "sequential")
OVERLAPPED_MODES = ("interleaved", "coresident")


@dataclass(frozen=True)
class MicroBatch:
    """Requests decoded together: ids and their context lengths (tokens already in the KV cache)."""

    index: int
    request_ids: tuple[int, ...]
    context_lens: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.request_ids) != len(self.context_lens) or not self.request_ids:
            raise ValueError("request_ids and context_lens must be non-empty and equally long")
        if any(c < 0 for c in self.context_lens):
            raise ValueError("context_lens must be >= 0")

    @property
    def tokens(self) -> int:
        return len(self.request_ids)

    @property
    def kv_tokens(self) -> int:
        return sum(self.context_lens)


@dataclass(frozen=True)
class Slot:
    """One op of one decoder layer: `stage` of `micro_batch` on `partition`.

    Slots with the same `phase` run concurrently (memory side beside compute side); phases run
    in order. `layer_offset` is the layer the op belongs to relative to the layer being run (-1:
    the previous layer's post_attn, +1: the next layer's pre_attn). `predicted_us` is the op's
    latency alone on its partition.
    """

    stage: str
    micro_batch: int
    partition: str
    phase: int = 0
    layer_offset: int = 0
    predicted_us: float = 0.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.layer_offset not in (-1, 0, 1) or self.phase < 0:
            raise ValueError("layer_offset must be -1, 0 or 1 and phase >= 0")


def interleaved_pattern(num_micro_batches: int) -> tuple[Slot, ...]:
    """The per-layer slots of an interleaved or co-resident step, unpriced: phase j runs
    attention of micro-batch j on the memory side beside post_attn + pre_attn of micro-batch
    (j + 1) % n on the compute side (the last phase's partner is already one layer on)."""
    n = num_micro_batches
    if n < 2:
        raise ValueError(f"an interleaved step needs two or more micro-batches, got {n}")
    slots = []
    for j in range(n):
        partner = (j + 1) % n
        post_offset, pre_offset = (-1, 0) if j < n - 1 else (0, 1)
        slots += [Slot("attention", j, "memory", j, 0),
                  Slot("post_attn", partner, "compute", j, post_offset),
                  Slot("pre_attn", partner, "compute", j, pre_offset)]
    return tuple(slots)


@dataclass(frozen=True)
class SwitchPoint:
    """When to stop decoding and prefill the waiting prompts (TD-Pipe's decode-to-prefill switch).

    Decode `step` more steps, then switch and prefill `admitted_prompts` (indices into the
    waiting queue). `tokens_per_s` is over that cycle (decode steps, switch, prefill);
    `horizon_end_tokens_per_s` is the same if the switch waits until the horizon's end, and
    `tdpipe_step` / `tdpipe_tokens_per_s` what TD-Pipe's intensity rule picks on the same inputs.
    """

    step: int
    horizon_steps: int
    tokens_per_s: float
    admitted_prompts: tuple[int, ...]
    prefill_us: float
    switch_cost_us: float
    horizon_end_tokens_per_s: float
    tdpipe_step: int
    tdpipe_tokens_per_s: float


@dataclass(frozen=True)
class Schedule:
    """How one decode step runs: SM split, micro-batches, the slots of a layer, predictions.

    Modes: "interleaved" (the memory and compute sides on two SM partitions of memory_sms and
    compute_sms SMs), "coresident" (both sides on every SM: memory_sms = compute_sms = the GPU's
    SMs; the attention's persistent CTAs within attention_smem_bytes of shared memory each),
    "sequential" (one micro-batch, every op on all SMs). `mode_reason` says why this mode and
    not another (an overlapped mode not priced or refused, or the predicted times)."""

    model: ModelShape
    device: str
    mode: str
    memory_sms: int
    compute_sms: int
    micro_batches: tuple[MicroBatch, ...]
    slots: tuple[Slot, ...]
    predicted_step_us: float
    sequential_step_us: float
    roofline_floor_us: float
    switch: SwitchPoint | None = None
    phase_us: tuple[float, ...] = ()        # per phase of one layer, co-run slowdown included
    prologue: tuple[Slot, ...] = ()         # before layer 0: pre_attn(layer 0) of micro-batch 0
    epilogue: tuple[Slot, ...] = ()         # after the last layer: its post_attn of mbs 1..n-1
    solver: str = ""
    attention_smem_bytes: int = 0           # co-resident: the attention's shared memory per CTA
    mode_reason: str = ""
    version: int = SCHEDULE_VERSION

    def __post_init__(self) -> None:
        if self.version != SCHEDULE_VERSION:
            raise ValueError(f"version must be {SCHEDULE_VERSION}, got {self.version!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "sequential" and self.memory_sms != 0:
            raise ValueError("memory_sms must be 0 in sequential mode")
        if self.mode in OVERLAPPED_MODES and (self.memory_sms <= 0
                                              or len(self.micro_batches) < 2):
            raise ValueError(f"{self.mode} mode needs memory_sms > 0 and two or more "
                             f"micro_batches")
        if self.mode == "coresident" and (self.memory_sms != self.compute_sms
                                          or self.attention_smem_bytes <= 0):
            raise ValueError("coresident mode runs both sides on every SM (memory_sms == "
                             "compute_sms, the GPU's SM count) and needs attention_smem_bytes > 0")
        if self.mode != "coresident" and self.attention_smem_bytes != 0:
            raise ValueError(f"attention_smem_bytes is for coresident mode; it must be 0 in "
                             f"{self.mode} mode")
        for name in ("memory_sms", "compute_sms"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, "
                                 f"got {getattr(self, name)!r}")
        if self.compute_sms <= 0:
            raise ValueError(f"compute_sms must be positive, got {self.compute_sms}")
        for name in ("predicted_step_us", "sequential_step_us", "roofline_floor_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if [m.index for m in self.micro_batches] != list(range(len(self.micro_batches))):
            raise ValueError("micro_batches must be indexed 0..n-1 in order")
        ids = [i for m in self.micro_batches for i in m.request_ids]
        if len(ids) != len(set(ids)):
            raise ValueError("micro_batches: a request id appears twice")
        for slot in self.slots + self.prologue + self.epilogue:
            if not 0 <= slot.micro_batch < len(self.micro_batches):
                raise ValueError(f"slots: micro_batch {slot.micro_batch} does not exist")
        self._check_slots()

    def _check_slots(self) -> None:
        """Interleaved and co-resident: each micro-batch runs each stage once per layer;
        sequential: the layer has every stage. Each on the side its mode implies."""
        overlapped = self.mode in OVERLAPPED_MODES
        groups = [mb.index for mb in self.micro_batches] if overlapped else [None]
        for index in groups:
            stages = sorted(s.stage for s in self.slots if index in (None, s.micro_batch))
            if stages != sorted(STAGES):
                who = "the layer" if index is None else f"micro-batch {index}"
                raise ValueError(f"slots: {who} runs {stages}, expected each of "
                                 f"{list(STAGES)} once")
        for slot in self.slots:
            want = "all" if self.mode == "sequential" else \
                ("memory" if slot.stage == "attention" else "compute")
            if slot.partition != want:
                raise ValueError(f"slots: {slot.stage} of micro-batch {slot.micro_batch} is on "
                                 f"{slot.partition!r}, expected {want!r} in {self.mode} mode")
        phases = sorted({s.phase for s in self.slots})
        if phases != list(range(len(phases))):
            raise ValueError(f"slots: phases must be numbered 0..n-1, got {phases}")
        if self.phase_us and len(self.phase_us) != len(phases):
            raise ValueError(f"phase_us has {len(self.phase_us)} entries for {len(phases)} phases")

    @property
    def num_requests(self) -> int:
        return sum(m.tokens for m in self.micro_batches)

    @property
    def speedup(self) -> float:
        """Predicted sequential step time over predicted step time (>= 1 by construction)."""
        return self.sequential_step_us / self.predicted_step_us

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"version": data.pop("version"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any, where: str = "schedule") -> "Schedule":
        return _parse_schedule(data, where)

    @classmethod
    def from_json(cls, text: str, where: str = "schedule") -> "Schedule":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"{where}: not valid JSON ({exc})") from None
        return _parse_schedule(data, where)


def load_schedule(path: str | os.PathLike, model: ModelShape | str | None = None) -> Schedule:
    """A validated Schedule from a JSON file; with `model`, also check it was planned for it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ScheduleError(f"cannot read schedule {str(path)!r}: {exc.strerror or exc}") from None
    schedule = Schedule.from_json(text, where=str(path))
    if model is not None:
        check_model(schedule, model, where=str(path))
    return schedule


def check_model(schedule: Schedule, model: ModelShape | str, where: str = "schedule") -> None:
    """Raise ScheduleError naming the first shape field where the schedule's model differs."""
    if isinstance(model, str):
        from pipedecode.planner.problem import resolve_model
        model = resolve_model(model)
    for field in dataclasses.fields(ModelShape):
        if field.name == "name":
            continue
        want, got = getattr(model, field.name), getattr(schedule.model, field.name)
        if want != got:
            raise ScheduleError(
                f"{where}: field 'model.{field.name}' is {got!r} but the model has {want!r}: "
                f"this schedule is for {schedule.model.name!r}; plan again for {model.name!r}")


def _parse_schedule(data: Any, where: str) -> Schedule:
    if not isinstance(data, dict):
        raise ScheduleError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("version") not in READS_VERSIONS:
        raise ScheduleError(f"{where}: field 'version' is {data.get('version')!r}, this "
                            f"pipedecode reads versions {READS_VERSIONS}; plan again")
    kwargs = _fields(Schedule, data, where)
    if kwargs["version"] == 1:
        if {"attention_smem_bytes", "mode_reason"} & set(kwargs) or \
                kwargs.get("mode") == "coresident":
            raise ScheduleError(f"{where}: a version 1 schedule has no co-resident mode, "
                                f"attention_smem_bytes or mode_reason; set version "
                                f"{SCHEDULE_VERSION}")
        kwargs["version"] = SCHEDULE_VERSION
    kwargs["model"] = _build(ModelShape, kwargs["model"], f"{where}: field 'model'")
    kwargs["micro_batches"] = _build_list(MicroBatch, kwargs["micro_batches"], where,
                                          "micro_batches")
    for name in ("slots", "prologue", "epilogue"):
        if name in kwargs:
            kwargs[name] = _build_list(Slot, kwargs[name], where, name)
    if kwargs.get("switch") is not None:
        kwargs["switch"] = _build(SwitchPoint, kwargs["switch"], f"{where}: field 'switch'")
    if "phase_us" in kwargs:
        kwargs["phase_us"] = _tuple(kwargs["phase_us"], f"{where}: field 'phase_us'")
    try:
        return Schedule(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"{where}: {exc}") from None


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ScheduleError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ScheduleError(f"{where}: unknown field {unknown[0]!r}")
    for f in fields.values():
        if f.name not in data and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise ScheduleError(f"{where}: missing field {f.name!r}")
    return dict(data)


def _build(cls: type, data: Any, where: str) -> Any:
    kwargs = _fields(cls, data, where)
    kwargs = {k: _tuple(v, where) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"{where}: {exc}") from None


def _build_list(cls: type, rows: Any, where: str, name: str) -> tuple:
    if not isinstance(rows, (list, tuple)):
        raise ScheduleError(f"{where}: field {name!r} must be a list")
    return tuple(_build(cls, row, f"{where}: field '{name}[{i}]'") for i, row in enumerate(rows))


def _tuple(values: Any, where: str) -> tuple:
    if not isinstance(values, (list, tuple)):
        raise ScheduleError(f"{where} must be a list")
    return tuple(values)
