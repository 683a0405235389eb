"""A sweep's results for people: the markdown table with its assumptions, and the plot.

Owns `markdown(result)` (what was simulated and on what assumptions, then one row per point)
and `plot(result, path)` (throughput against GPU count, one line per link and strategy, a
panel per model; matplotlib imported here only). Knows nothing of how points are simulated.
"""

from __future__ import annotations

from pipedecode.sim.sweep import SweepResult

STRATEGY_WORDS = {"tdpipe": "TD-Pipe", "pipeline": "plain pipeline (prefill-first)",
                  "tensor": "tensor parallel (estimate)"}
_COLORS = {"tdpipe": "tab:red", "pipeline": "tab:blue", "tensor": "tab:green"}
_STYLES = {"pcie5": "--", "nvlink4": "-"}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _layout(p) -> str:
    if p.gpus == 1:
        return "1 GPU"
    shape = (f"{p.per_replica} stages" if p.strategy != "tensor" else f"TP {p.per_replica}")
    return shape if p.replicas == 1 else f"{p.replicas} x {shape}"


def command_line(spec) -> str:
    """The `pipedecode simulate` command that makes this sweep."""
    o, words = spec.options, ["pipedecode simulate"]
    words += [f"--model {m}" for m in spec.models]
    words += [f"--device {spec.device}", f"--gpus {','.join(map(str, spec.gpus))}"]
    words += [f"--link {name}" for name in spec.links]
    words += [f"--strategy {name}" for name in spec.strategies]
    words += [f"--workload {spec.workload}", f"--requests {spec.requests}", f"--seed {spec.seed}",
              f"--seqs-per-gpu {o.seqs_per_gpu}",
              f"--max-num-batched-tokens {o.max_num_batched_tokens}",
              f"--predictor {o.predictor}"]
    if o.micro_batches is not None:
        words.append(f"--micro-batches {o.micro_batches}")
    if o.step_overhead_us:
        words.append(f"--step-overhead-us {o.step_overhead_us:g}")
    if not o.prefill_launch:
        words.append("--no-prefill-launch")
    return " ".join(words)


def _ratio(a, b) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def ratios(result: SweepResult) -> list[str]:
    """TD-Pipe over plain pipeline and over tensor parallel at each (model, GPUs, link)."""
    by = {(p.model, p.gpus, p.link, p.strategy): p for p in result.points}
    rows = ["| model | GPUs | link | TD-Pipe / plain pipeline | TD-Pipe / tensor parallel | "
            "loaded: / plain pipeline | loaded: / tensor parallel |",
            "|---|---|---|---|---|---|---|"]
    for (model, gpus, link, strategy), td in by.items():
        pp, tp = by.get((model, gpus, link, "pipeline")), by.get((model, gpus, link, "tensor"))
        if strategy != "tdpipe" or gpus == 1 or pp is None or tp is None:
            continue
        loaded = td.loaded_output_tokens_per_s
        rows.append(f"| {model} | {gpus} | {link} | "
                    f"{_ratio(td.output_tokens_per_s, pp.output_tokens_per_s)} | "
                    f"{_ratio(td.output_tokens_per_s, tp.output_tokens_per_s)} | "
                    f"{_ratio(loaded, pp.loaded_output_tokens_per_s)} | "
                    f"{_ratio(loaded, tp.loaded_output_tokens_per_s)} |")
    return rows if len(rows) > 2 else []


def markdown(result: SweepResult, title: str = "Pipeline simulation",
             plot_name: str | None = None) -> str:
    """The whole report; `plot_name`: a PNG beside it (`plot`) to show under the ratios."""
    w, a, s = result.workload, result.assumptions, result.spec
    lines = [
        f"# {title}", "",
        "**A simulation, not a measurement.** The engine's own scheduler and policies "
        "(`pipedecode/engine`) run on a virtual clock; every GPU time comes from the cost model "
        "on a device profile, every transfer from the link model below "
        "(`pipedecode/sim`, `pipedecode simulate`).", "",
        "## Assumptions", "",
        f"- Device: {a['device']}.",
        *[f"- Link {text}." for text in a["links"].values()],
        f"- Memory: {a['memory']}.",
        f"- Scheduling: {a['seats']}; {a['micro_batches']}; output lengths predicted by "
        f"{a['predictor']}; {a['controller']}.",
        f"- Costs: {a['costs']}.",
        *([f"- Engine: {a['engine']}."] if "engine" in a else []),
        f"- Replicas: {a['replicas']}.",
        f"- Workload: `{w['spec']}` seed {w['seed']}, {w['requests']} requests per point, mean "
        f"prompt {w['mean_prompt_tokens']:.0f} and output {w['mean_output_tokens']:.0f} tokens "
        f"(longest {w['max_prompt_tokens']} and {w['max_output_tokens']}); every request runs "
        f"to its max_tokens.",
        "- Throughput: tokens over the time the whole batch took (its tail included: the last "
        "requests decode in small batches); *loaded*: output tokens per second until the "
        "waiting queue first emptied ('-': the whole batch was admitted at once; then TD-Pipe "
        "and the plain pipeline schedule alike, every prompt prefilled first, and the "
        "whole-batch number is mostly the batch's tail). Bubble: the share of GPU time not "
        "computing (idle stages, or waiting on all-reduces).", "",
        f"Made by `{command_line(s)}`.", "",
        *(["## TD-Pipe against the others (output tokens/s)", "", *ratios(result), ""]
          if ratios(result) else []),
        *([f"![simulated throughput against GPU count]({plot_name})", ""] if plot_name else []),
        "## Results", "",
        "| model | GPUs | link | strategy | layout | output tok/s | total tok/s | loaded output "
        "tok/s | bubble | switches | preemptions |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in result.points:
        lines.append(f"| {p.model} | {p.gpus} | {p.link} | {STRATEGY_WORDS[p.strategy]} | "
                     f"{_layout(p)} | {_num(p.output_tokens_per_s)} | "
                     f"{_num(p.total_tokens_per_s)} | {_num(p.loaded_output_tokens_per_s)} | "
                     f"{p.bubble_fraction:.2f} | {p.switches} | {p.preemptions} |")
    if result.skipped:
        lines += ["", "Not simulated:", ""]
        lines += [f"- {k['model']} on {k['gpus']} GPU(s), {k['strategy']}: {k['reason']}"
                  for k in result.skipped]
    lines += ["", f"{len(result.points)} points in {result.elapsed_s:.0f} s on the CPU "
                  f"({s.device}, {', '.join(s.links)})."]
    return "\n".join(lines) + "\n"


def plot(result: SweepResult, path: str) -> None:
    """Output tokens/s against GPUs (log2 x, log y), whole batch (top) and loaded (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p.model for p in result.points))
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 9), squeeze=False)
    for col, model in enumerate(models):
        for row, attr in enumerate(("output_tokens_per_s", "loaded_output_tokens_per_s")):
            ax = axes[row][col]
            for strategy in result.spec.strategies:
                for link in result.spec.links:
                    pts = sorted((p.gpus, getattr(p, attr)) for p in result.points
                                 if p.model == model and p.strategy == strategy
                                 and p.link == link and getattr(p, attr) is not None)
                    if pts:
                        ax.plot(*zip(*pts), _STYLES.get(link, ":"), marker="o",
                                color=_COLORS[strategy], label=f"{STRATEGY_WORDS[strategy]}, "
                                                               f"{link}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks([1, 2, 4, 8, 16, 32, 64], labels=["1", "2", "4", "8", "16", "32", "64"])
            ax.set_xlim(0.8, 80)
            ax.set_xlabel("GPUs")
            ax.set_ylabel("output tokens / s")
            what = "whole batch" if row == 0 else "loaded (until the queue empties)"
            ax.set_title(f"{model} on {result.spec.device}: {what}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "every batch was admitted at once", ha="center",
                        transform=ax.transAxes)
    fig.suptitle(f"Simulated, not measured: {result.workload['requests']} "
                 f"{result.workload['spec']} requests per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
