"""GPU correctness of the executor, run before the benchmark.

1. Partition placement: a Triton kernel records the SM id (%smid) of each of its programs. Launched
   on each partition stream inside ONE CUDA graph (fork/join events), as the executor captures its
   step, the two kernels must use disjoint SM sets of the granted sizes.
2. Generation in bf16 through the engine (`LLM` on the paged model runner, CUDA graphs):
   decode steps interleaved (two micro-batches on 48 + 84 SMs, given by hand) vs sequential vs
   transformers eager, greedy, ragged prompts: tokens identical, logits relative error < 1e-2
   (compared at steps where the token prefixes still agree).
3. Generation in float32 (reported, not gating): greedy tokens against transformers' eager
   float32 loop, where bf16 rounding no longer decides near-ties.

Usage: python benchmarks/check_correctness.py [--out DIR]
(writes check_correctness_<gpu>.json and .md, by default under benchmarks/results)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)


def _smid_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def smid(out_ptr, iters):
        pid = tl.program_id(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32,
                                       is_pure=False, pack=1)
        acc = pid.to(tl.float32)
        for _ in range(iters):          # keep programs resident so the grid spreads out
            acc = acc * 1.000001 + 0.5
        tl.store(out_ptr + pid, sm + (acc < -1.0).to(tl.int32))

    return smid


def check_partitions(memory_sms: int = 48) -> dict:
    from pipedecode.runtime.partition_streams import open_partition_streams

    kernel = _smid_kernel()
    streams = open_partition_streams(memory_sms, 132, torch.device("cuda"))
    programs = 8 * 132
    a = torch.full((programs,), -1, dtype=torch.int32, device="cuda")
    b = torch.full_like(a, -1)
    mem, comp = streams.memory_stream, streams.compute_stream
    for s, out in ((mem, a), (comp, b)):            # warm up (compile) eagerly
        with torch.cuda.stream(s):
            kernel[(programs,)](out, 20000)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=comp):
        mem.wait_stream(comp)
        with torch.cuda.stream(mem):
            kernel[(programs,)](a, 20000)
        kernel[(programs,)](b, 20000)
        comp.wait_stream(mem)
    a.fill_(-1)
    b.fill_(-1)
    graph.replay()                                   # replayed from the default stream
    torch.cuda.synchronize()
    sms_a, sms_b = set(a.tolist()), set(b.tolist())
    return {"memory_granted": streams.memory_sms, "compute_granted": streams.compute_sms,
            "route": streams.source, "memory_sms_used": len(sms_a),
            "compute_sms_used": len(sms_b), "overlap_sms": len(sms_a & sms_b),
            "unwritten": int((a < 0).sum() + (b < 0).sum()),
            "ok": not (sms_a & sms_b) and len(sms_a) <= streams.memory_sms
            and len(sms_b) <= streams.compute_sms and -1 not in sms_a | sms_b}


def _split_planner(memory_sms: int = 48):
    """Every bucket of two or more rows split into two interleaved micro-batches."""
    from pipedecode.runtime.program import manual_schedule

    def plan(shape, profile, lens):
        groups = [list(range(0, len(lens), 2)), list(range(1, len(lens), 2))]
        return manual_schedule(shape, lens, groups, memory_sms, profile.sm_count - memory_sms)

    return plan


def _engine(model, prompts, new_tokens: int, *, interleaved: bool):
    """(tokens [requests, new_tokens], logits per request [new_tokens, vocab] float32, how the
    decode steps ran) of greedy generation through the engine."""
    from pipedecode.engine import LLM, SamplingParams
    from pipedecode.runtime.model_runner import PagedModelRunner

    factory = PagedModelRunner.factory(keep_logits=True,
                                       planner=_split_planner() if interleaved else None)
    llm = LLM(model, policy="prefill-first", kv_cache_memory=4 << 30, interleave=interleaved,
              runner=factory)
    outputs = llm.generate([p.tolist() for p in prompts],
                           SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True),
                           use_tqdm=False)
    kept = llm.runner.kept_logits
    logits = [torch.stack([kept[(i, p.numel() + t)] for t in range(new_tokens)])
              for i, p in enumerate(prompts)]
    tokens = torch.tensor([list(o.outputs[0].token_ids) for o in outputs])
    how = {k: v for k, v in llm.runner.describe()["executors"].items()}
    del llm
    torch.cuda.empty_cache()
    return tokens, logits, how


def _hf_greedy(model, prompt, new_tokens):
    out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    return out.sequences[0, prompt.numel():].cpu(), torch.stack([l[0] for l in out.logits]).float().cpu()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _setup(spec: str, overrides: dict, dtype: torch.dtype, batch: int):
    """(model on the GPU, its shape, prompt lengths, ragged prompts): the same seeds for every
    dtype."""
    from pipedecode.models import build_model, model_shape

    model = build_model(spec, dtype=dtype, seed=0, attn_implementation="eager",
                        **overrides).cuda()
    shape = model_shape(model)
    gen = torch.Generator().manual_seed(1)
    lens = [int(x) for x in torch.randint(5, 40, (batch,), generator=gen)]
    prompts = [torch.randint(1, shape.vocab_size, (n,), generator=gen).cuda() for n in lens]
    return model, shape, lens, prompts


def check_generation(spec: str, overrides: dict, batch: int = 6, new_tokens: int = 12) -> dict:
    model, shape, lens, prompts = _setup(spec, overrides, torch.bfloat16, batch)
    seq_tokens, seq_logits, _ = _engine(model, prompts, new_tokens, interleaved=False)
    inter_tokens, inter_logits, how = _engine(model, prompts, new_tokens, interleaved=True)
    row = {"model": spec, "batch": batch, "new_tokens": new_tokens, "executor": how,
           "tokens_inter_eq_seq": bool(torch.equal(seq_tokens, inter_tokens)),
           "rel_err_inter_vs_seq": max(_rel(a, b) for a, b in zip(inter_logits, seq_logits))}
    # Teacher-forced references on the tokens pipedecode produced: float32 (the bf16 weights
    # upcast) and transformers' own bf16 eager, one forward over prompt + generated tokens.
    ref32 = copy.deepcopy(model).float()
    err_pd, err_hf, same, margins = [], [], 0, []
    for i, prompt in enumerate(prompts):
        seq_ids = torch.cat([prompt, seq_tokens[i, :-1].cuda()])[None]
        n = prompt.numel()
        with torch.no_grad():
            l32 = ref32(seq_ids).logits[0, n - 1:].float().cpu()
            l16 = model(seq_ids).logits[0, n - 1:].float().cpu()
        err_pd.append(_rel(seq_logits[i], l32))
        err_hf.append(_rel(l16, l32))
        hf_tokens, _ = _hf_greedy(model, prompt, new_tokens)
        if torch.equal(hf_tokens, seq_tokens[i]):
            same += 1
        else:   # how close to a tie the float32 reference was where the two greedy runs split
            t = int((hf_tokens != seq_tokens[i]).nonzero()[0])
            top = l32[t].topk(2).values
            margins.append(float((top[0] - top[1]) / l32[t].std()))
    del ref32
    row.update(requests_tokens_eq_hf=same, requests=batch,
               rel_err_pd_vs_fp32=max(err_pd), rel_err_hf_bf16_vs_fp32=max(err_hf),
               split_margins_in_logit_std=margins)
    row["ok"] = (row["tokens_inter_eq_seq"] and row["rel_err_inter_vs_seq"] < 1e-2
                 and max(err_pd) < 1e-2)
    row["tokens_eq_hf_all"] = same == batch
    return row


def check_float32_tokens(spec: str, overrides: dict, batch: int = 6,
                         new_tokens: int = 12) -> dict:
    """The same model in float32: do greedy tokens match transformers' eager float32 loop for
    every request once bf16 rounding no longer decides near-ties? Sequential and interleaved."""
    model, shape, lens, prompts = _setup(spec, overrides, torch.float32, batch)
    hf = [_hf_greedy(model, p, new_tokens)[0] for p in prompts]
    row = {"model": spec, "dtype": "float32", "requests": batch}
    for name in ("sequential", "interleaved"):
        tokens, _, how = _engine(model, prompts, new_tokens, interleaved=name == "interleaved")
        row[f"{name}_mode"] = sorted({e["mode"] for e in how.values()})
        row[f"{name}_requests_tokens_eq_hf"] = sum(
            bool(torch.equal(h, tokens[i])) for i, h in enumerate(hf))
    return row


def markdown(result: dict) -> str:
    p = result["partitions"]
    lines = record.heading("GPU correctness of the executor", result) + [
        f"Overall: {'ok' if result['ok'] else 'FAILED'}. Partitions ({p['route']}): "
        f"{p['memory_granted']} + {p['compute_granted']} SMs granted, "
        f"{p['memory_sms_used']} + {p['compute_sms_used']} used, {p['overlap_sms']} shared.", "",
        "| model | dtype | requests | interleaved = sequential tokens | rel. error vs fp32 | "
        "requests with transformers' tokens | ok |", "|---|---|---|---|---|---|---|"]
    for r in result["generation"]:
        lines.append(f"| {r['model']} | bf16 | {r['requests']} | {r['tokens_inter_eq_seq']} | "
                     f"{r['rel_err_pd_vs_fp32']:.2e} | {r['requests_tokens_eq_hf']} | {r['ok']} |")
    for r in result["float32"]:
        same = r.get("error") or (f"sequential {r['sequential_requests_tokens_eq_hf']}, "
                                  f"interleaved {r['interleaved_requests_tokens_eq_hf']}")
        lines.append(f"| {r['model']} | float32 | {r.get('requests', '-')} | - | - | {same} | - |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=record.RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_correctness: needs a CUDA GPU", file=sys.stderr)
        return 2
    result = {**record.environment(), "partitions": check_partitions(48)}
    print("partitions:", result["partitions"], flush=True)
    small = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, vocab_size=32000)
    result["generation"] = []
    for spec, over in (("llama-3-8b", small), ("llama-2-7b", {**small, "num_key_value_heads": 8}),
                       ("tiny-qwen2", {})):
        row = check_generation(spec, over)
        print({k: v for k, v in row.items() if k != "executor"}, row["executor"], flush=True)
        result["generation"].append(row)
    result["float32"] = []
    for spec, over in (("llama-3-8b", small), ("llama-2-7b", {**small, "num_key_value_heads": 8}),
                       ("tiny-qwen2", {})):
        try:
            row = check_float32_tokens(spec, over)
        except Exception as exc:  # noqa: BLE001 - report, the bf16 checks decide ok
            row = {"model": spec, "dtype": "float32", "error": f"{type(exc).__name__}: {exc}"}
        print(row, flush=True)
        result["float32"].append(row)
    result["ok"] = result["partitions"]["ok"] and all(r["ok"] for r in result["generation"])
    record.write(args.out, "check_correctness", result, markdown(result))
    print("correctness ok" if result["ok"] else "correctness FAILED", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
