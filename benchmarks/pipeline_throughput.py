"""Offline throughput of the pipeline-parallel engine on N GPUs: TD-Pipe's temporal policy
against plain pipeline parallelism (prefill-first), each beside the simulator's prediction.

Run under torchrun, one process (one pipeline stage) per GPU:
  torchrun --nproc-per-node 2 benchmarks/pipeline_throughput.py --model llama-3-8b
  torchrun --nproc-per-node 4 benchmarks/pipeline_throughput.py --model llama-3-70b

Random bf16 weights of the model's real shape: the model is built on the meta device and each
stage draws its own layers' weights on its GPU (pipedecode/distributed/layout.py), so tokens
mean nothing. The workload is pipedecode/sim/workloads.py's ShareGPT-shaped one (`--requests`
requests, seeded), every request arriving at once, each with max_tokens its output length;
`--predictor online` (the engine's estimator learns as requests finish; requests do not ignore
EOS, which random weights make rare, and the table counts those that ended early) or `oracle`
(ignore_eos: every length known exactly), as the simulator's predictor options mean. One
engine (one KV pool, its CUDA graphs on every stage) serves both policies, after an untimed
warm-up (max_num_seqs requests of 16 tokens whose outputs end one group a step, so decode
micro-batches of every size up to max_num_seqs / N run and their graphs are captured; the
policy is read at each generate call); each cell is timed once. Interleaving micro-batches
on SM partitions within a stage is off unless `--interleave` (its planner runs on rank 0's
host, inside the timed cells). Per cell: output and total
tokens/s, elapsed seconds, preemptions, peak KV; beside it the simulator's prediction
(pipedecode.sim.strategies.simulate_point: tdpipe for temporal, pipeline for prefill-first)
for the same model, GPU profile, GPU count, link (`--link`), max_num_seqs and KV blocks.
Rank 0 writes benchmarks/results/pipeline_throughput_<model>_pp<N>_<gpu>.json and .md.

Usage: torchrun --nproc-per-node N benchmarks/pipeline_throughput.py [--model M]
       [--requests 1000] [--policies temporal,prefill-first] [--predictor online|oracle]
       [--max-num-seqs 256] [--kv-cache-gib G] [--interleave] [--link nvlink4] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)

POLICIES = ("temporal", "prefill-first")
STRATEGY_OF = {"temporal": "tdpipe", "prefill-first": "pipeline"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="of the workload")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--predictor", choices=("online", "oracle"), default="online")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--kv-cache-gib", type=float, default=None,
                        help="each stage's pool (default: its GPU's free memory)")
    parser.add_argument("--interleave", action="store_true",
                        help="let each stage interleave micro-batches on SM partitions")
    parser.add_argument("--link", default="nvlink4", help="the simulator's link")
    parser.add_argument("--out", default=record.RESULTS)
    args = parser.parse_args(argv)
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown or not args.policies:
        parser.error(f"--policies: one or more of {', '.join(POLICIES)}, got {unknown}")
    if min(args.requests, args.max_num_seqs) < 1:
        parser.error("--requests and --max-num-seqs must be positive")
    return args


def requests(workload, vocab_size: int, predictor: str):
    """(prompts, SamplingParams per request): max_tokens each request's output length."""
    from pipedecode.engine.params import SamplingParams

    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=predictor == "oracle")
              for n in workload.output_lens]
    return workload.prompts(vocab_size), params


def warmup_requests(max_num_seqs: int, num_stages: int, vocab_size: int):
    """(prompts, params) of the warm-up: max_num_seqs prompts of 16 tokens, admitted at once;
    their output lengths end one group of num_stages requests each step, so the decode
    micro-batches (ceil(running / num_stages) each) take every size down to 1."""
    from pipedecode.engine.params import SamplingParams

    prompts = [[3 + (i * 7 + j) % (vocab_size - 3) for j in range(16)]
               for i in range(max_num_seqs)]
    params = [SamplingParams(max_tokens=2 + i // num_stages, temperature=0, ignore_eos=True)
              for i in range(max_num_seqs)]
    return prompts, params


def simulated(model: str, profile, link: str, gpus: int, policy: str, workload,
              max_num_seqs: int, kv_blocks: int, predictor: str) -> dict:
    """The simulator's prediction for one cell, or why there is none."""
    from pipedecode.sim.links import get_link
    from pipedecode.sim.strategies import SimOptions, simulate_point

    options = SimOptions(seqs_per_gpu=max(1, max_num_seqs // gpus), kv_blocks=kv_blocks,
                         predictor=predictor)
    try:
        point = simulate_point(model, profile, get_link(link), gpus, STRATEGY_OF[policy],
                               workload, options)
    except Exception as exc:  # noqa: BLE001 - a missing prediction is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"output_tokens_per_s": point.output_tokens_per_s,
            "total_tokens_per_s": point.total_tokens_per_s, "switches": point.switches,
            "preemptions": point.preemptions, "stage_layers": list(point.stage_layers),
            "max_num_seqs": point.max_num_seqs}


def cell(policy: str, stats, seconds: float, outputs, workload) -> dict:
    """One measured cell from LLM.last_stats and the outputs."""
    early = sum(len(o.outputs[0].token_ids) < n for o, n in zip(outputs, workload.output_lens))
    return {"policy": policy, "elapsed_s": seconds, "requests": stats.requests,
            "output_tokens": stats.output_tokens, "prompt_tokens": stats.prompt_tokens,
            "output_tokens_per_s": stats.output_tokens / seconds,
            "total_tokens_per_s": (stats.output_tokens + stats.prompt_tokens) / seconds,
            "preemptions": stats.preemptions, "peak_kv": stats.peak_kv_usage,
            "ended_early": early}


def _num(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(result: dict) -> str:
    """The table: one row per policy, measured and simulated side by side."""
    lines = record.heading(f"Pipeline throughput, {result['model']} on {result['gpus']} GPUs",
                           result)
    w = result["workload"]
    lines += [f"{w['requests']} ShareGPT-shaped requests (mean prompt "
              f"{w['mean_prompt_tokens']:.0f}, mean output {w['mean_output_tokens']:.0f} "
              f"tokens), all at once; random bf16 weights; stages {result['stage_layers']} "
              f"layers; {result['kv_blocks']} KV blocks of {result['block_size']}; "
              f"max_num_seqs {result['max_num_seqs']}; predictor {result['predictor']}; "
              f"interleaving {'on' if result['interleave'] else 'off'}; "
              f"warm-up {result['warmup_s']:.1f} s untimed. Simulated: link "
              f"{result['link']}.", "",
              "| policy | output tok/s | total tok/s | elapsed s | preemptions | peak KV | "
              "ended early | simulated output tok/s | simulated / measured |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in result["cells"]:
        sim = row["simulated"].get("output_tokens_per_s")
        ratio = f"{sim / row['output_tokens_per_s']:.2f}" if sim else \
            row["simulated"].get("error", "-")
        lines.append(f"| {row['policy']} | {_num(row['output_tokens_per_s'])} | "
                     f"{_num(row['total_tokens_per_s'])} | {row['elapsed_s']:.1f} | "
                     f"{row['preemptions']} | {100 * row['peak_kv']:.0f}% | "
                     f"{row['ended_early']} | {_num(sim)} | {ratio} |")
    by = {r["policy"]: r["output_tokens_per_s"] for r in result["cells"]}
    if len(by) == 2:
        lines += ["", f"temporal / prefill-first: "
                      f"{by['temporal'] / by['prefill-first']:.2f}x output tokens/s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from pipedecode.engine import LLM
    from pipedecode.engine.predictor import OracleLengths
    from pipedecode.models import build_model
    from pipedecode.sim.workloads import sharegpt_shaped

    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    if gpus < 2:
        print("pipeline_throughput: run under torchrun --nproc-per-node N (N >= 2), one "
              "process per GPU", file=sys.stderr)
        return 2
    workload = sharegpt_shaped(args.requests, args.seed)
    model = build_model(args.model, dtype=torch.bfloat16, device="meta")
    prompts, params = requests(workload, model.config.vocab_size, args.predictor)
    memory = None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2 ** 30)
    llm = LLM(model, pipeline_parallel_size=gpus, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_memory=memory,
              interleave=args.interleave, policy="prefill-first",
              predictor=OracleLengths(prompts, workload.output_lens)
              if args.predictor == "oracle" else None)
    start = time.perf_counter()
    llm.generate(*warmup_requests(args.max_num_seqs, gpus, model.config.vocab_size),
                 use_tqdm=False)
    warmup_s = time.perf_counter() - start
    cells = []
    for policy in args.policies:
        llm.policy = policy                   # read at each generate call
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        if llm.pipeline.is_driver:
            cells.append(cell(policy, llm.last_stats, seconds, outputs, workload))
    if not llm.pipeline.is_driver:
        return 0
    result = dict(record.environment(), model=args.model, gpus=gpus, predictor=args.predictor,
                  link=args.link, interleave=args.interleave, stage_layers=list(llm.pipeline.stage_layers),
                  kv_blocks=llm.runner.num_blocks - 1, block_size=llm.runner.block_size,
                  max_num_seqs=args.max_num_seqs, warmup_s=warmup_s,
                  workload=workload.summary())
    for row in cells:
        row["simulated"] = simulated(args.model, llm.profile, args.link, gpus, row["policy"],
                                     workload, args.max_num_seqs, result["kv_blocks"],
                                     args.predictor)
    result["cells"] = cells
    record.publish(args.out, f"pipeline_throughput_{args.model}_pp{gpus}", result,
                   markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
