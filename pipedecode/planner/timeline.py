"""A Schedule laid out in time: which op of which micro-batch runs on which partition (or, in
co-resident mode, which stream) when.

Owns the layout (phases back to back, the compute side's ops back to back inside a phase) and
its Chrome/Perfetto trace form. Knows nothing of drawing or files; `pipedecode show` renders it.
Times are predictions from the schedule: each op takes its isolated `predicted_us`, a phase
lasts `phase_us` (co-run slowdown and shared-bandwidth floor included), so a box may end before
its phase does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode.planner.schedule import Schedule, Slot

LANES = ("memory", "compute", "all")


@dataclass(frozen=True)
class Event:
    name: str
    stage: str
    micro_batch: int
    partition: str
    layer: int          # -1: not a decoder layer (the LM head)
    start_us: float
    duration_us: float

    @property
    def end_us(self) -> float:
        return self.start_us + self.duration_us


def _serial(slots: tuple[Slot, ...], layer: int, start: float) -> tuple[list[Event], float]:
    events = []
    for slot in slots:
        events.append(Event(f"{slot.stage} mb{slot.micro_batch}", slot.stage, slot.micro_batch,
                            slot.partition, layer, start, slot.predicted_us))
        start += slot.predicted_us
    return events, start


def _layer(schedule: Schedule, layer: int, start: float) -> tuple[list[Event], float]:
    """One decoder layer; ops of layer -1 or num_layers (outside the model) are left out."""
    last = schedule.model.num_layers - 1
    events: list[Event] = []
    phases = sorted({s.phase for s in schedule.slots})
    for phase in phases:
        span = schedule.phase_us[phase] if phase < len(schedule.phase_us) else 0.0
        for lane in LANES:
            ops = tuple(s for s in schedule.slots if s.phase == phase and s.partition == lane
                        and 0 <= layer + s.layer_offset <= last)
            lane_events, end = [], start
            for slot in ops:
                lane_events += [Event(f"{slot.stage} mb{slot.micro_batch}", slot.stage,
                                      slot.micro_batch, lane, layer + slot.layer_offset, end,
                                      slot.predicted_us)]
                end += slot.predicted_us
            events += lane_events
            span = max(span, end - start)
        start += span
    return events, start


def timeline(schedule: Schedule, layers: int | None = None) -> list[Event]:
    """Events of one decode step (the first `layers` layers only, when given)."""
    count = schedule.model.num_layers if layers is None else min(layers, schedule.model.num_layers)
    events, now = _serial(schedule.prologue, 0, 0.0)
    for layer in range(count):
        layer_events, now = _layer(schedule, layer, now)
        events += layer_events
    if count == schedule.model.num_layers:
        tail, now = _serial(schedule.epilogue, count - 1, now)
        events += tail
        head = schedule.predicted_step_us - now
        if head > 0:
            events.append(Event("final norm + lm_head", "head", -1, "all", -1, now, head))
    return events


def lane_names(schedule: Schedule) -> dict[str, str]:
    """What each lane is: two partitions (interleaved), two streams on every SM (co-resident),
    or all SMs."""
    if schedule.mode == "coresident":
        sms = schedule.compute_sms
        return {"memory": f"memory stream (all {sms} SMs, attention within "
                          f"{schedule.attention_smem_bytes // 1024} KiB)",
                "compute": f"compute stream (all {sms} SMs)", "all": f"all SMs ({sms})"}
    return {"memory": f"memory partition ({schedule.memory_sms} SMs)",
            "compute": f"compute partition ({schedule.compute_sms} SMs)",
            "all": f"all SMs ({schedule.memory_sms + schedule.compute_sms})"}


def chrome_trace(schedule: Schedule, layers: int | None = None) -> dict:
    """Chrome / Perfetto trace-event JSON: one process, one thread per partition."""
    lanes = {lane: i + 1 for i, lane in enumerate(LANES)}
    names = lane_names(schedule)
    meta = [{"ph": "M", "name": "process_name", "pid": 1,
             "args": {"name": f"pipedecode {schedule.model.name} on {schedule.device}"}}]
    meta += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": names[lane]}}
             for lane, tid in lanes.items()]
    events = [{"name": e.name if e.layer < 0 else f"{e.name} L{e.layer}", "cat": e.stage,
               "ph": "X", "pid": 1, "tid": lanes[e.partition], "ts": round(e.start_us, 3),
               "dur": round(e.duration_us, 3),
               "args": {"micro_batch": e.micro_batch, "layer": e.layer}}
              for e in timeline(schedule, layers)]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}
