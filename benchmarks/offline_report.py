"""The offline-throughput benchmark's targets and tables, from its result dict (no GPU).

A result holds `rows` (one per cell: workload, system, policy, interleave, predictor, status
and what was measured), `bounds` (the roofline bound of each workload) and the run's settings.
Owns the three targets (pipedecode >= 3x transformers on every workload; temporal >=
prefill-first on b; >= 50% of the roofline bound on a), each met, missed or not measured with
the numbers that say why, the markdown and the short table printed last.
"""

from __future__ import annotations

import record
from offline_workloads import NAMES, SIZES

SPEEDUP_TARGET, ROOFLINE_TARGET = 3.0, 0.5


def label(row: dict) -> str:
    if row["system"] == "transformers":
        return "transformers generate (static batches)"
    on = "on" if row["interleave"] else "off"
    oracle = ", oracle lengths" if row.get("predictor") == "oracle" else ""
    return f"pipedecode {row['policy']}, interleave {on}{oracle}"


def _ok(rows: list[dict], workload: str, **match) -> list[dict]:
    return [r for r in rows if r["workload"] == workload and r["status"] == "ok"
            and all(r.get(k) == v for k, v in match.items())]


def best_pipedecode(rows: list[dict], workload: str) -> dict | None:
    """The fastest pipedecode cell of `workload` (output tokens/s), oracle cells aside."""
    cells = [r for r in _ok(rows, workload, system="pipedecode")
             if r.get("predictor") != "oracle"]
    return max(cells, key=lambda r: r["output_tokens_per_s"], default=None)


def _target(name: str, met: bool | None, detail: str) -> dict:
    return {"target": name, "met": met, "detail": detail}


def targets(result: dict) -> list[dict]:
    rows, bounds, out = result["rows"], result["bounds"], []
    for w in result["workloads"]:
        hf, pd = _ok(rows, w, system="transformers"), best_pipedecode(rows, w)
        name = f"({w}) pipedecode >= {SPEEDUP_TARGET:g}x transformers"
        if not hf or not pd:
            out.append(_target(name, None, "not measured: a cell did not run"))
            continue
        ratio = pd["output_tokens_per_s"] / hf[0]["output_tokens_per_s"]
        out.append(_target(name, ratio >= SPEEDUP_TARGET,
                           f"{ratio:.2f}x: {label(pd)} {pd['output_tokens_per_s']:,.0f} vs "
                           f"{hf[0]['output_tokens_per_s']:,.0f} output tokens/s (transformers "
                           f"on {hf[0]['requests']} of {result['requests'][w]} requests)"))
    out += _temporal_target(result)
    if "a" in result["workloads"]:
        pd, bound = best_pipedecode(rows, "a"), bounds.get("a")
        name = f"(a) >= {ROOFLINE_TARGET:.0%} of the roofline bound"
        if pd is None or bound is None:
            out.append(_target(name, None, "not measured: no pipedecode cell of (a) ran"))
        else:
            share = pd["output_tokens_per_s"] / bound["output_tokens_per_s"]
            out.append(_target(name, share >= ROOFLINE_TARGET, (
                f"{share:.0%}: {pd['output_tokens_per_s']:,.0f} of "
                f"{bound['output_tokens_per_s']:,.0f} output tokens/s; measured "
                f"{pd['prefill_s']:.1f} s prefill + {pd['decode_s']:.1f} s decode (mean decode "
                f"batch {pd['mean_decode_batch']:.0f}) against the bound's "
                f"{bound['seconds']:.1f} s "
                f"({bound['prefill_share']:.0%} prefill, batch up to {bound['largest_batch']})")))
    return out


def _temporal_target(result: dict) -> list[dict]:
    if "b" not in result["workloads"]:
        return []
    name, rows, out = "(b) temporal >= prefill-first", result["rows"], []
    for on in (False, True):
        t = _ok(rows, "b", system="pipedecode", policy="temporal", interleave=on,
                predictor="online")
        p = _ok(rows, "b", system="pipedecode", policy="prefill-first", interleave=on)
        if t and p:
            t, p = t[0], p[0]
            out.append(_target(f"{name} (interleave {'on' if on else 'off'})",
                               t["output_tokens_per_s"] >= p["output_tokens_per_s"],
                               f"{_tokens_text(t)} vs {_tokens_text(p)}"
                               f" output tokens/s; decode steps {t['decode_steps']} vs "
                               f"{p['decode_steps']}, preemptions {t['preemptions']} vs "
                               f"{p['preemptions']}, peak KV {t['peak_kv']:.0%} vs "
                               f"{p['peak_kv']:.0%}"))
    return out or [_target(name, None, "not measured: a cell did not run")]


def _tokens_text(row: dict) -> str:
    """Output tokens/s, with the range of the runs when the cell ran several times."""
    runs = row.get("output_tokens_per_s_runs")
    spread = f" ({min(runs):,.0f}-{max(runs):,.0f} in {len(runs)} runs)" if runs else ""
    return f"{row['output_tokens_per_s']:,.0f}{spread}"


def _cell_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"| {label(row)} | {row['status']} | | | | | | | | | |"
    subset = f"{row['requests']} (subset)" if row.get("subset") else str(row["requests"])
    inter = f"{row['interleaved_steps']}/{row['decode_steps']}" \
        if row["system"] == "pipedecode" else "-"
    plans = f"{row['plans']} in {row['plan_s']:.1f} s" if row.get("plans") else "-"
    kv = f"{row['peak_kv']:.0%}" if row.get("peak_kv") is not None else "-"
    pre = row.get("preemptions", "-")
    phases = f"{row['prefill_s']:.2f} | {row['decode_s']:.2f}" if "prefill_s" in row else "- | -"
    return (f"| {label(row)} | {subset} | {_tokens_text(row)} | "
            f"{row['total_tokens_per_s']:,.0f} | {row['peak_gpu_gib']:.1f} | {pre} | {kv} | "
            f"{inter} | {plans} | {phases} |")


def _scale_text(scale) -> str:
    """The share of each workload's requests that ran (older results hold one number)."""
    if not isinstance(scale, dict):
        return f"scale {scale:g} of each workload's requests"
    return "requests kept per workload: " + ", ".join(f"({k}) {v:g}" for k, v in scale.items())


def _interleave_text(kept: list[str]) -> str:
    return "" if len(kept) == 2 else f"; only the interleave-{kept[0]} cells ran"


def markdown(result: dict) -> str:
    lines = record.heading("Offline throughput", result) + [
        f"{result['model']} (random weights, all {result['layers']} layers, "
        f"{result.get('dtype', 'bfloat16')}), profile "
        f"{result['profile']}; {_scale_text(result['scale'])}; "
        f"transformers on the first {result['hf_requests']} requests of each, in static "
        f"batches of {result['hf_batch']}"
        + (f", at most {result['hf_budget_s']:.0f} s per workload (a batch ends early at "
           f"transformers' max_time; the tokens produced by then count)"
           if result.get("hf_budget_s") else "")
        + " (its tokens/s extrapolate to the workload); "
        f"pipedecode max_num_seqs {result['max_num_seqs']}, KV pool {result['kv_pool_gib']:.1f} "
        f"GiB" + _interleave_text(result.get("interleave", ["off", "on"]))
        + ("; every prefill eager (no prefill graphs)"
           if result.get("prefill_graphs") == "off" else "")
        + f". {result['notes']}", ""]
    for w in result["workloads"]:
        b = result["bounds"].get(w)
        lines += [f"## ({w}) {NAMES[w]}: {result['requests'][w]} of {SIZES[w]} requests", ""]
        if b:
            lines += [f"Roofline bound: {b['output_tokens_per_s']:,.0f} output / "
                      f"{b['total_tokens_per_s']:,.0f} total tokens/s ({b['seconds']:.1f} s, "
                      f"batch up to {b['largest_batch']}, {b['prefill_share']:.0%} prefill).", ""]
        lines += ["| system | requests | output tok/s | total tok/s | peak GPU GiB | "
                  "preemptions | peak KV | interleaved steps | plans | prefill s | decode s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_cell_line(r) for r in result["rows"] if r["workload"] == w] + [""]
    lines += ["## Targets", ""]
    for t in result["targets"]:
        word = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: **{word}** ({t['detail']})")
    return "\n".join(lines) + "\n"


def short_table(result: dict) -> str:
    """Per workload: transformers, the best pipedecode cell, the bound (output tokens/s)."""
    lines = [f"{'workload':<9}{'transformers':>14}{'pipedecode':>12}{'bound':>12}  "
             f"(output tokens/s) best cell"]
    for w in result["workloads"]:
        hf = _ok(result["rows"], w, system="transformers")
        pd, b = best_pipedecode(result["rows"], w), result["bounds"].get(w)
        lines.append(f"{w:<9}{hf[0]['output_tokens_per_s'] if hf else float('nan'):>14,.0f}"
                     f"{pd['output_tokens_per_s'] if pd else float('nan'):>12,.0f}"
                     f"{b['output_tokens_per_s'] if b else float('nan'):>12,.0f}  "
                     f"{label(pd) if pd else 'not run'}")
    for t in result["targets"]:
        lines.append(f"{ {True: 'met', False: 'MISSED', None: 'n/a'}[t['met']]:>7}  {t['target']}")
    return "\n".join(lines)
