"""`pipedecode generate`: requests from a JSONL file through the engine, outputs to JSONL.

Owns the JSONL formats (docs/generate-jsonl.md), checking every input line before the model
loads (a malformed line is reported with its number and nothing is written), mapping a bad
request back to its line, writing the outputs at once (a temporary file renamed into place)
and the summary line. Under torchrun (`--pipeline-parallel N`) rank 0 writes the outputs; it
defers SIGTERM until they are written, since torchrun stops every process as soon as one
stage exits, and rank 0 cannot go on without the others anyway. Knows nothing of
scheduling: it calls `pipedecode.engine.LLM`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from pipedecode.errors import PipedecodeError

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                   "stop_token_ids", "ignore_eos")
MAX_REPORTED = 20

EPILOG = """\
input (--prompts), one JSON object per line (blank lines are skipped):
  {"prompt": "Hello, my name is"}                       text (needs the model's tokenizer)
  {"prompt_token_ids": [128000, 9906, 11]}              token ids
  optional: "id" (string or integer, unique; default the request's index from 0) and any
  sampling field, overriding the command line for that request: max_tokens, temperature,
  top_p, top_k, seed, stop (a string or a list), stop_token_ids, ignore_eos.
output (--out), one line per request, in input order:
  {"id", "index", "prompt_tokens", "token_ids", "text" (null without a tokenizer),
   "finish_reason" ("stop", "length" or "error"), "stop_reason", "error",
   "arrival_time_s", "first_token_time_s", "finish_time_s", "time_to_first_token_s",
   "latency_s", "preemptions"}   (times: seconds since the epoch)
examples:
  pipedecode generate --model ./my-llama --prompts in.jsonl --out out.jsonl
  pipedecode generate --model llama-3-8b --prompts ids.jsonl --out out.jsonl \\
      --policy prefill-first --max-tokens 256 --ignore-eos
  torchrun --nproc-per-node 2 -m pipedecode.cli generate --model llama-3-8b \\
      --prompts ids.jsonl --out out.jsonl --pipeline-parallel 2     (two GPUs, one stage each)
A malformed line exits with status 2 naming its line, before the model loads; if generation
fails part-way, every request is still written (unfinished ones with finish_reason "error")
and the status is 1. docs/generate-jsonl.md has the details."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate for the requests of a JSONL file (the engine)",
        description="Run requests through pipedecode's engine: continuous batching on a paged "
                    "KV cache, scheduled by TD-Pipe's temporal policy (prefill and decode "
                    "phases, greedy prefill on predicted output lengths) or prefill-first.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="preset name (random weights), local model directory or hub id")
    parser.add_argument("--prompts", required=True, metavar="IN.jsonl", help="requests to run")
    parser.add_argument("--out", required=True, metavar="OUT.jsonl", help="outputs to write")
    parser.add_argument("--policy", choices=("temporal", "prefill-first"), default="temporal",
                        help="scheduling policy (default temporal)")
    sampling = parser.add_argument_group("sampling (defaults for every request; a line's own "
                                         "fields win)")
    sampling.add_argument("--max-tokens", type=int, default=16,
                          help="most tokens to generate per request (default 16)")
    sampling.add_argument("--temperature", type=float, default=1.0,
                          help="0 is greedy (default 1.0)")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1)")
    sampling.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0: off)")
    sampling.add_argument("--stop", action="append", default=None, metavar="STRING",
                          help="a stop string (repeatable; needs a tokenizer)")
    sampling.add_argument("--ignore-eos", action="store_true",
                          help="generate max_tokens whatever the EOS token (benchmarks)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="seed of the global generator, for requests without their own "
                               "seed (default 0)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--device", default=None,
                        help="device profile for the cost model and plan (default: this GPU's)")
    engine.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"),
                        default="auto", help="weights (auto: bfloat16 on a GPU, float32 on a CPU)")
    engine.add_argument("--max-num-seqs", type=int, default=256,
                        help="most requests decoding at once (default 256)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=8192,
                        help="most prompt tokens per prefill batch (default 8192)")
    engine.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache size (default: the GPU memory left free)")
    engine.add_argument("--block-size", type=int, default=16,
                        help="tokens per KV block (default 16)")
    engine.add_argument("--kv-threshold", type=float, default=0.9,
                        help="temporal: share of the KV pool its greedy prefill may fill at "
                             "the predicted peak (default 0.9)")
    engine.add_argument("--pipeline-parallel", type=int, default=1, metavar="N",
                        help="pipeline stages, one process (one GPU) each, under torchrun "
                             "--nproc-per-node N; rank 0 writes the outputs and --kv-cache-gib "
                             "is each stage's (default 1: no pipeline; docs/pipeline.md)")
    engine.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


@dataclass(frozen=True)
class Request:
    line: int
    id: Any
    prompt: Any            # str or list[int]
    sampling: dict


def read_requests(path: str) -> list[Request]:
    """Every request of a JSONL file; PipedecodeError listing each malformed line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise PipedecodeError(f"{path}: not UTF-8 text ({exc.reason})") from None
    requests, errors = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            requests.append(_request(number, text, len(requests)))
        except ValueError as exc:
            errors.append(f"{path} line {number}: {exc}")
    if errors:
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise PipedecodeError("\n".join(errors[:MAX_REPORTED]) + more)
    if not requests:
        raise PipedecodeError(f"{path} holds no requests; write one JSON object per line, "
                              f'e.g. {{"prompt": "Hello"}}')
    seen: dict[str, int] = {}
    for r in requests:
        if str(r.id) in seen:
            raise PipedecodeError(f"{path} line {r.line}: id {r.id!r} repeats line "
                                  f"{seen[str(r.id)]}; ids must be unique")
        seen[str(r.id)] = r.line
    return requests


def _request(line: int, text: str, index: int) -> Request:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"id", "prompt", "prompt_token_ids", *SAMPLING_FIELDS})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}")
    if ("prompt" in obj) == ("prompt_token_ids" in obj):
        raise ValueError('give exactly one of "prompt" and "prompt_token_ids"')
    prompt = obj.get("prompt", obj.get("prompt_token_ids"))
    if "prompt" in obj and (not isinstance(prompt, str) or not prompt):
        raise ValueError('"prompt" must be a non-empty string')
    if "prompt_token_ids" in obj and (
            not isinstance(prompt, list) or not prompt
            or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in prompt)):
        raise ValueError('"prompt_token_ids" must be a non-empty list of non-negative integers')
    rid = obj.get("id", index)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise ValueError('"id" must be a string or an integer')
    return Request(line, rid, prompt, {k: obj[k] for k in SAMPLING_FIELDS if k in obj})


def sampling_params(requests: list[Request], args: argparse.Namespace) -> list:
    """One SamplingParams per request: the command line's, overridden by the line's fields."""
    from pipedecode.engine.params import SamplingParams

    defaults = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, stop=tuple(args.stop or ()), ignore_eos=args.ignore_eos)
    out, errors = [], []
    for r in requests:
        try:
            out.append(SamplingParams(**{**defaults, **r.sampling}))
        except (TypeError, ValueError) as exc:
            errors.append(f"{args.prompts} line {r.line}: {exc}")
    if errors:
        raise PipedecodeError("\n".join(errors[:MAX_REPORTED]))
    return out


def output_record(request: Request, index: int, output) -> dict:
    c, m = output.outputs[0], output.metrics
    return {"id": request.id, "index": index, "prompt_tokens": len(output.prompt_token_ids),
            "token_ids": list(c.token_ids), "text": c.text, "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason, "error": c.error,
            "arrival_time_s": m.arrival_time_s, "first_token_time_s": m.first_token_time_s,
            "finish_time_s": m.finish_time_s, "time_to_first_token_s": m.time_to_first_token_s,
            "latency_s": m.latency_s, "preemptions": m.preemptions}


def write_outputs(path: str, requests: list[Request], outputs: list) -> None:
    """All lines at once: a temporary file beside `path`, renamed over it when complete."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".generate-", suffix=".jsonl", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for i, (request, output) in enumerate(zip(requests, outputs)):
                f.write(json.dumps(output_record(request, i, output)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _run(args: argparse.Namespace) -> int:
    requests = read_requests(args.prompts)
    params = sampling_params(requests, args)
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise PipedecodeError(f"--out: the folder {folder} does not exist")
    for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "pipeline_parallel"):
        if getattr(args, name) <= 0:
            raise PipedecodeError(f"--{name.replace('_', '-')} must be positive")
    if args.kv_cache_gib is not None and args.kv_cache_gib <= 0:
        raise PipedecodeError("--kv-cache-gib must be positive")
    if args.pipeline_parallel > 1 and os.environ.get("RANK") == "0":
        with _sigterm_deferred() as stopped:
            code = _generate(args, requests, params)
        return 143 if stopped else code
    return _generate(args, requests, params)


@contextlib.contextmanager
def _sigterm_deferred():
    """SIGTERM noted, not obeyed, until the block ends (the main thread only); the list it
    yields holds the signal if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate(args: argparse.Namespace, requests: list[Request], params: list) -> int:
    import torch

    from pipedecode.engine import llm as engine

    torch.manual_seed(args.seed)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    memory = None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2 ** 30)
    try:
        llm = engine.LLM(args.model, device=args.device, dtype=dtype, policy=args.policy,
                         max_num_seqs=args.max_num_seqs,
                         max_num_batched_tokens=args.max_num_batched_tokens,
                         kv_cache_memory=memory, block_size=args.block_size,
                         kv_threshold=args.kv_threshold,
                         pipeline_parallel_size=args.pipeline_parallel)
        outputs = llm.generate([r.prompt for r in requests], params,
                               use_tqdm=not args.no_progress)
        if llm.pipeline is not None and not llm.pipeline.is_driver:
            return 0                # a later stage: rank 0 writes the outputs
    except engine.RequestError as exc:
        raise PipedecodeError(f"{args.prompts} line {requests[exc.index].line}: {exc}") from None
    except engine.GenerationError as exc:
        write_outputs(args.out, requests, exc.outputs)
        done = sum(o.finished for o in exc.outputs)
        print(f"pipedecode generate: error: {exc}; {done} of {len(requests)} requests "
              f"finished, all written to {args.out} (the others with finish_reason "
              f"\"error\")", file=sys.stderr)
        return 1
    write_outputs(args.out, requests, outputs)
    print(f"pipedecode generate: {llm.last_stats.summary()}; wrote {args.out}")
    return 0
