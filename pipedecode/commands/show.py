"""`pipedecode show`: a schedule as a table, a timeline PNG and a Chrome/Perfetto trace.

Owns the text table and the drawing (matplotlib, Agg backend). The PNG and the trace appear
only when both were made. Knows nothing of planning: it reads a schedule file and
`pipedecode.planner.timeline` lays it out.
"""

from __future__ import annotations

import argparse
import json

from pipedecode.commands.common import Outputs, provenance_of, speedup_words
from pipedecode.errors import PipedecodeError

STAGE_COLORS = {"pre_attn": "#4C72B0", "attention": "#DD8452", "post_attn": "#55A868",
                "head": "#8C8C8C"}
HATCHES = (None, "//", "..", "xx", "\\\\", "++")   # one per micro-batch, cycling


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="print a schedule as a table; draw its timeline (PNG) and a trace",
        description="Print a schedule written by `pipedecode plan` as tables (micro-batches, the "
                    "slots of one layer, predictions, switch point); optionally draw the "
                    "timeline of the first layers as a PNG and write the whole step as a "
                    "Chrome/Perfetto trace (open it in ui.perfetto.dev or chrome://tracing).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("schedule", help="schedule JSON written by `pipedecode plan`")
    parser.add_argument("--png", default=None, help="write the timeline to this PNG file")
    parser.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace JSON here")
    parser.add_argument("--layers", type=int, default=2,
                        help="decoder layers drawn in the PNG (default 2; the trace has all)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pipedecode.planner import load_schedule
    from pipedecode.planner.timeline import chrome_trace

    if args.layers <= 0:
        raise PipedecodeError(f"--layers must be positive, got {args.layers}")
    with Outputs() as outputs:
        png = outputs.path(args.png) if args.png else None
        trace = outputs.path(args.trace) if args.trace else None
        schedule = load_schedule(args.schedule)
        text = table(schedule)
        if png:
            draw(schedule, png, args.layers)
        if trace:
            with open(trace, "w") as f:
                f.write(json.dumps(chrome_trace(schedule)))
        outputs.commit()
    print(text)
    for path in (args.png, args.trace):
        if path:
            print(f"wrote {path}")
    return 0


def table(schedule) -> str:
    """Plain-text tables of a schedule."""
    s = schedule
    split = {"interleaved": f"memory {s.memory_sms} SMs | compute {s.compute_sms} SMs",
             "coresident": f"memory and compute streams on all {s.compute_sms} SMs, attention "
                           f"within {s.attention_smem_bytes // 1024} KiB per SM"
             }.get(s.mode, f"all {s.compute_sms} SMs")
    source = provenance_of(s.device)
    out = [f"schedule v{s.version}: {s.model.name} ({s.model.num_layers} layers) on {s.device} "
           f"({source}), {s.mode}, {split}, solver {s.solver or '-'}", "",
           f"{'micro-batch':>11} {'requests':>8} {'kv tokens':>10} {'mean ctx':>9}  request ids"]
    for m in s.micro_batches:
        ids = ",".join(map(str, m.request_ids[:8])) + (",..." if m.tokens > 8 else "")
        mean = m.kv_tokens / m.tokens
        out.append(f"{m.index:>11} {m.tokens:>8} {m.kv_tokens:>10} {mean:>9.0f}  {ids}")
    out += ["", "one decoder layer:",
            f"{'phase':>5} {'partition':>9} {'stage':>10} {'mb':>3} {'layer':>6} {'alone us':>9} "
            f"{'phase us':>9}"]
    for slot in s.slots:
        phase_us = s.phase_us[slot.phase] if slot.phase < len(s.phase_us) else float("nan")
        layer = "l" if slot.layer_offset == 0 else f"l{slot.layer_offset:+d}"
        out.append(f"{slot.phase:>5} {slot.partition:>9} {slot.stage:>10} {slot.micro_batch:>3} "
                   f"{layer:>6} {slot.predicted_us:>9.1f} {phase_us:>9.1f}")
    out += ["", f"predicted step   {s.predicted_step_us / 1e3:9.3f} ms",
            f"sequential step  {s.sequential_step_us / 1e3:9.3f} ms  "
            f"({speedup_words(s.speedup, source)})",
            f"roofline floor   {s.roofline_floor_us / 1e3:9.3f} ms"]
    if s.mode_reason:
        out.append(f"why {s.mode}: {s.mode_reason}")
    if s.switch is not None:
        w = s.switch
        out += ["", f"switch to prefill after {w.step} of {w.horizon_steps} decode steps, "
                    f"{len(w.admitted_prompts)} prompts admitted, prefill "
                    f"{w.prefill_us / 1e3:.1f} ms"
                    f" + switch {w.switch_cost_us / 1e3:.1f} ms",
                f"  {w.tokens_per_s:.0f} tok/s | TD-Pipe rule: after {w.tdpipe_step} steps, "
                f"{w.tdpipe_tokens_per_s:.0f} tok/s | at horizon end: "
                f"{w.horizon_end_tokens_per_s:.0f} tok/s"]
    return "\n".join(out)


def draw(schedule, path: str, layers: int) -> None:
    """Gantt chart of the prologue and the first `layers` layers: one lane per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = ["memory", "compute", "all"] if schedule.mode != "sequential" else ["all"]
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.9 * len(lanes)), layout="constrained")
    _boxes(ax, schedule, lanes, layers)
    _phase_lines(ax, schedule, layers)
    _decorate(fig, ax, schedule, lanes, layers)
    try:
        fig.savefig(path, dpi=120, format="png")
    except OSError as exc:
        raise PipedecodeError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _boxes(ax, schedule, lanes: list[str], layers: int) -> None:
    from pipedecode.planner.timeline import timeline

    events = timeline(schedule, layers)
    end_ms = max(e.end_us for e in events) / 1e3
    for e in events:
        y = lanes.index(e.partition)
        start, width = e.start_us / 1e3, e.duration_us / 1e3
        ax.broken_barh([(start, width)], (y - 0.4, 0.8), facecolors=STAGE_COLORS[e.stage],
                       edgecolors="white", linewidth=0.8,
                       hatch=HATCHES[e.micro_batch % len(HATCHES)] if e.micro_batch >= 0 else None)
        if width > 0.035 * end_ms:
            ax.text(start + width / 2, y, f"mb{e.micro_batch}\nL{e.layer}", ha="center",
                    va="center", fontsize=7, color="white",
                    bbox=dict(facecolor=STAGE_COLORS[e.stage], edgecolor="none", pad=1))


def _phase_lines(ax, schedule, layers: int) -> None:
    edge = sum(slot.predicted_us for slot in schedule.prologue)
    for _ in range(min(layers, schedule.model.num_layers)):
        for phase_us in schedule.phase_us:
            ax.axvline(edge / 1e3, color="#999999", linestyle=":", linewidth=0.8)
            edge += phase_us
    ax.axvline(edge / 1e3, color="#999999", linestyle=":", linewidth=0.8)


def _decorate(fig, ax, schedule, lanes: list[str], layers: int) -> None:
    from matplotlib.patches import Patch

    from pipedecode.planner.timeline import lane_names

    labels = {lane: name.replace(" (", "\n(", 1) for lane, name in lane_names(schedule).items()}
    ax.set_yticks(range(len(lanes)), [labels[lane] for lane in lanes])
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlabel("time (ms, predicted; dotted lines: phases, each as long as its slower side "
                  "after co-run slowdown and shared-HBM floor)" if schedule.mode != "sequential"
                  else "time (ms, predicted; dotted lines: phases)")
    shown = "prologue + first" if schedule.prologue else "first"
    ax.set_title(f"{schedule.model.name} on {schedule.device}: {schedule.mode}, {shown} "
                 f"{min(layers, schedule.model.num_layers)} of {schedule.model.num_layers} layers "
                 f"(step {schedule.predicted_step_us / 1e3:.2f} ms, sequential "
                 f"{schedule.sequential_step_us / 1e3:.2f} ms)", fontsize=10)
    handles = [Patch(color=STAGE_COLORS[s], label=s)
               for s in ("pre_attn", "attention", "post_attn")]
    if len(schedule.micro_batches) > 1:
        handles += [Patch(facecolor="white", edgecolor="black", hatch=HATCHES[i % len(HATCHES)],
                          label=f"mb{i}") for i in range(min(len(schedule.micro_batches), 6))]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
