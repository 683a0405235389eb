"""`LLM`: requests in, tokens out. A thin coordinator over the scheduler, the runner, the sampler.

Owns resolving the model and its tokenizer, checking each request before anything runs, the
step loop (schedule -> runner -> sample -> postprocess) and building vLLM-shaped outputs.
Knows nothing of how batches are chosen (scheduler.py, policies.py) or computed (runner.py).

Errors. A bad request (empty prompt, a prompt that leaves no room for output within the
model's positions or the KV cache, token ids outside the vocabulary, bad sampling fields given
as a dict, a text prompt or stop strings without a tokenizer) raises `RequestError` naming the
request's index before any request runs, so nothing is lost. A failure while running (the
runner raising) raises `GenerationError`, whose `outputs` hold every request in input order:
those finished before the failure as they are, the others with finish_reason "error" and the
message. More requests than fit at once queue.

Pipeline parallelism (`pipeline_parallel_size=N`, pipedecode.distributed): the same loop
with the scheduler's N slots in flight, driven by rank 0 over N processes started by torchrun;
a lost stage is a failure while running, named in the message.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Sequence as Seq

import torch

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.params import CompletionOutput, RequestMetrics, RequestOutput, SamplingParams
from pipedecode.engine.policies import DEFAULT_KV_THRESHOLD, POLICIES, make_policy
from pipedecode.engine.predictor import as_predictor
from pipedecode.engine.runner import (DEFAULT_BLOCK_SIZE, RunnerConfig, RunnerFactory,
                                      check_runner, default_runner)
from pipedecode.engine.sampler import Sampler
from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
from pipedecode.engine.sequence import Sequence, first_stop_string
from pipedecode.engine.stats import GenerateStats, StatsRecorder
from pipedecode.engine.loading import load_model_and_tokenizer
from pipedecode.profiles.registry import resolve_profile
from pipedecode.errors import PipedecodeError, WorkloadError


class RequestError(WorkloadError):
    """A request that cannot run; `index` is its position in the prompts given."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"request {index}: {message}")
        self.index = index


class GenerationError(PipedecodeError):
    """Generation failed part-way; `outputs` has one RequestOutput per request, in order."""

    def __init__(self, message: str, outputs: list[RequestOutput]) -> None:
        super().__init__(message)
        self.outputs = outputs


class LLM:
    """An offline engine: `LLM(model).generate(prompts, SamplingParams(...))`.

    model: a transformers Llama-family model, a local directory, a hub id, or a preset name
        (random weights, fixed `seed`). tokenizer: a tokenizer or its name (default: the
        model directory's or hub id's; presets and model objects have none unless given).
    device: the device profile (name, JSON path or DeviceProfile) the cost model and the
        runner's plan use; None: the profile of this machine's GPU, "h100" without one.
    dtype: weights loaded from names (default bfloat16 on a GPU, float32 on the CPU).
    max_num_seqs: most requests decoding at once. max_num_batched_tokens: most prompt tokens
        in one prefill batch (a longer prompt runs alone). kv_cache_memory: bytes for the KV
        pool (None: what the GPU has free). block_size: tokens per KV block.
    interleave: let the runner's plan interleave micro-batches of a decode step on SM
        partitions where it pays (False: always sequential).
    policy: "temporal" (TD-Pipe) or "prefill-first"; kv_threshold and switch_cost_us tune
        "temporal" (share of the pool its greedy prefill fills at the predicted peak; the
        bubble of a decode-to-prefill switch, default one prefill's launch cost).
    predictor: output-length predictor (None: OnlineLengthEstimator; a LengthPredictor, or
        any callable prompt_token_ids -> tokens). runner: a factory (model, RunnerConfig) ->
        ModelRunner (default: pipedecode's paged GPU runner).
    pipeline_parallel_size: pipeline stages, one process each (one GPU each), started by
        `torchrun --nproc-per-node N` running the same script: rank 0 schedules (N
        micro-batches in flight; "temporal" prices its switch for N stages) and its
        `generate` returns the outputs, the other ranks' `generate` serve it and return [].
        kv_cache_memory is then each stage's pool. pipeline_timeout_s: the longest wait for
        one message between stages (docs/pipeline.md).
    """

    def __init__(self, model: Any, *, tokenizer: Any = None, device: Any = None,
                 dtype: torch.dtype | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, kv_cache_memory: int | None = None,
                 policy: str = "temporal", block_size: int = DEFAULT_BLOCK_SIZE,
                 predictor: Any = None, kv_threshold: float = DEFAULT_KV_THRESHOLD,
                 switch_cost_us: float | None = None, seed: int = 0,
                 interleave: bool = True, runner: RunnerFactory | None = None,
                 pipeline_parallel_size: int = 1,
                 pipeline_timeout_s: float | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.num_stages, self.pipeline = _check_stages(pipeline_parallel_size, runner), None
        built = not isinstance(model, torch.nn.Module)
        self.model, self.tokenizer, self._why_no_tokenizer = load_model_and_tokenizer(
            model, tokenizer, dtype, seed, device="cpu" if self.num_stages > 1 else None)
        self.profile = resolve_profile(device)
        config = RunnerConfig(self.profile, block_size, kv_cache_memory, max_num_seqs,
                              max_num_batched_tokens, interleave)
        if self.num_stages == 1:
            self.runner = check_runner((runner or default_runner)(self.model, config))
        else:
            self.pipeline = _start_pipeline(self.model, self.num_stages, config, seed,
                                            pipeline_timeout_s, free_model=built)
            self.runner = check_runner(self.pipeline.stage)
        self.max_model_len = min(self.runner.max_model_len,
                                 (self.runner.num_blocks - 1) * self.runner.block_size)
        self.policy, self.kv_threshold = policy, kv_threshold
        self.cost = _cost_model(self.model, self.profile)
        most_layers = max(self.pipeline.stage_layers) if self.pipeline else \
            self.cost.model.num_layers                  # the slowest stage's launches
        self.switch_cost_us = (self.profile.launch_overhead_us * most_layers
                               if switch_cost_us is None else float(switch_cost_us))
        self.scheduler_config = SchedulerConfig(self.max_model_len, max_num_seqs,
                                                max_num_batched_tokens, self.num_stages,
                                                eos_token_ids=_eos_ids(self.model, self.tokenizer))
        self.predictor = as_predictor(predictor)
        self._policy()                          # bad kv_threshold / switch cost fail here
        self.sampler = Sampler()
        self.last_stats: GenerateStats | None = None
        self._ids = itertools.count()

    def _policy(self):
        if self.policy == "temporal":
            return make_policy("temporal", self.cost, kv_threshold=self.kv_threshold,
                               switch_cost_us=self.switch_cost_us, num_stages=self.num_stages)
        return make_policy(self.policy)

    # ---- requests ---------------------------------------------------------------------------
    def generate(self, prompts: Any, sampling_params: Any = None, *,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Outputs for `prompts` (strings, token-id lists, or dicts with "prompt" or
        "prompt_token_ids"; one prompt alone is a list of one) in their order.
        sampling_params: one SamplingParams (or a dict of its fields) for all, or one per
        prompt; None: SamplingParams() (max_tokens 16). A pipeline's ranks > 0 serve rank 0's
        call and return []."""
        if self.pipeline is not None and not self.pipeline.is_driver:
            return self.pipeline.serve()
        prompts = _as_list(prompts)
        try:
            params = self._params(prompts, sampling_params)
            arrival = time.time()
            seqs = [self._sequence(i, p, sp, arrival)
                    for i, (p, sp) in enumerate(zip(prompts, params))]
            scheduler = self._scheduler(seqs)
            recorder = StatsRecorder(len(seqs), use_tqdm)
        except BaseException:
            if self.pipeline is not None:       # the other ranks' calls end too
                self.pipeline.cancel()
            raise
        try:
            if self.pipeline is None:
                self._loop(scheduler, recorder)
            else:
                self.pipeline.run(scheduler, seqs, recorder)
        except Exception as exc:
            recorder.close()
            message = f"generation failed: {type(exc).__name__}: {exc}"
            for seq in scheduler.abort_all(message):
                self.sampler.release(seq.seq_id)
            raise GenerationError(message, [self._output(s) for s in seqs]) from exc
        self.last_stats = recorder.finish(
            requests=len(seqs), prompt_tokens=sum(s.num_prompt_tokens for s in seqs),
            output_tokens=sum(s.num_output_tokens for s in seqs),
            preemptions=scheduler.num_preemptions,
            peak_kv_blocks=scheduler.block_manager.peak_used_blocks,
            kv_blocks=scheduler.block_manager.num_usable_blocks, policy=self.policy)
        return [self._output(s) for s in seqs]

    def _scheduler(self, seqs: list[Sequence]) -> Scheduler:
        scheduler = Scheduler(self.scheduler_config,
                              BlockManager(self.runner.num_blocks, self.runner.block_size),
                              self._policy(), self.predictor,
                              micro_batches_for=self.runner.num_micro_batches,
                              detokenize=self._detokenize if self.tokenizer is not None else None)
        for seq in seqs:
            scheduler.add(seq)
        return scheduler

    def _loop(self, scheduler: Scheduler, recorder: StatsRecorder) -> None:
        while scheduler.has_unfinished():
            batch = scheduler.schedule()
            if batch is None:
                raise RuntimeError(f"the scheduler formed no batch with {len(scheduler.waiting)} "
                                   f"waiting and {len(scheduler.running)} running requests")
            start = time.perf_counter()
            seqs = list(batch.seqs)
            if batch.kind == "prefill":
                logits = self.runner.prefill(seqs)
            else:
                logits = self.runner.decode(seqs, batch.micro_batches)
            tokens = self.sampler(logits, seqs)       # .tolist() waits for the device
            seconds = time.perf_counter() - start
            finished = scheduler.postprocess(batch, tokens)
            for seq in finished:
                self.sampler.release(seq.seq_id)
            recorder.step(batch.kind, batch.num_tokens, seconds, len(finished))

    def _params(self, prompts: list, sampling_params: Any) -> list[SamplingParams]:
        if sampling_params is None or isinstance(sampling_params, (SamplingParams, dict)):
            one = sampling_params if isinstance(sampling_params, SamplingParams) \
                else SamplingParams(**(sampling_params or {}))
            return [one] * len(prompts)
        given = list(sampling_params)
        if len(given) != len(prompts):
            raise ValueError(f"{len(given)} sampling params for {len(prompts)} prompts; give "
                             f"one for all or one per prompt")
        return [_as_params(i, sp) for i, sp in enumerate(given)]

    def _sequence(self, index: int, prompt: Any, params: SamplingParams,
                  arrival: float) -> Sequence:
        text, ids = self._tokens(index, prompt)
        if not ids:
            raise RequestError(index, "the prompt is empty; give at least one token")
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(index, f"token ids {bad[:5]} are outside the vocabulary "
                                      f"(0..{vocab - 1})")
        if params.stop and self.tokenizer is None:
            raise RequestError(index, f"stop strings need a tokenizer, and "
                                      f"{self._why_no_tokenizer}")
        if len(ids) >= self.runner.max_model_len:
            raise RequestError(index, f"the prompt of {len(ids)} tokens leaves no room for output "
                                      f"within the model's {self.runner.max_model_len} positions")
        if len(ids) >= self.max_model_len:
            bm = self.runner
            raise RequestError(index, f"the prompt of {len(ids)} tokens leaves no room for output "
                                      f"in the KV cache ({bm.num_blocks - 1} blocks of "
                                      f"{bm.block_size} tokens); give the cache more memory "
                                      f"(kv_cache_memory) or shorten the prompt")
        seq_id = next(self._ids)
        return Sequence(seq_id, ids, params, request_id=str(seq_id), prompt=text,
                        arrival_time_s=arrival)

    def _tokens(self, index: int, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if ("prompt" in prompt) == ("prompt_token_ids" in prompt):
                raise RequestError(index, "a dict prompt needs exactly one of 'prompt' and "
                                          "'prompt_token_ids'")
            prompt = prompt.get("prompt", prompt.get("prompt_token_ids"))
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError(index, f"a text prompt needs a tokenizer, and "
                                          f"{self._why_no_tokenizer}")
            return prompt, list(self.tokenizer(prompt)["input_ids"])
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.flatten().tolist()
        try:
            ids = list(prompt)
        except TypeError:
            raise RequestError(index, f"a prompt must be a string or a list of token ids, got "
                                      f"{type(prompt).__name__}") from None
        if any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
            raise RequestError(index, "token ids must be integers")
        return None, ids

    # ---- outputs ----------------------------------------------------------------------------
    def _detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _output(self, seq: Sequence) -> RequestOutput:
        text = None
        if self.tokenizer is not None:
            text = self._detokenize(seq.output_token_ids)
            if isinstance(seq.stop_reason, str):
                found = first_stop_string(text, [seq.stop_reason])
                text = text[:found[0]] if found else text
        completion = CompletionOutput(0, text, tuple(seq.output_token_ids), seq.finish_reason,
                                      seq.stop_reason, seq.error)
        metrics = RequestMetrics(seq.arrival_time_s, seq.first_token_time_s, seq.finish_time_s,
                                 seq.num_preemptions)
        return RequestOutput(seq.request_id, seq.prompt, tuple(seq.prompt_token_ids),
                             (completion,), seq.finish_reason in ("stop", "length"), metrics)


def _as_list(prompts: Any) -> list:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return [prompts] if prompts.dim() == 1 else list(prompts)
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [prompts]                      # one prompt of token ids
    return prompts


def _as_params(index: int, params: Any) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if isinstance(params, SamplingParams):
        return params
    if isinstance(params, dict):
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise RequestError(index, f"unknown sampling field(s) {unknown}; known: "
                                      f"{sorted(fields)}")
        try:
            return SamplingParams(**params)
        except ValueError as exc:
            raise RequestError(index, str(exc)) from None
    raise RequestError(index, f"sampling params must be SamplingParams or a dict, got "
                              f"{type(params).__name__}")


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
    """The model's EOS ids (generation config, else config), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)


def _check_stages(size: Any, runner: Any) -> int:
    """The stage count, checked (and, for a pipeline, torchrun's environment: a one-line
    error before anything loads)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"pipeline_parallel_size must be a positive integer, got {size!r}")
    if size > 1:
        if runner is not None:
            raise ValueError("runner= and pipeline_parallel_size > 1 cannot be combined: a "
                             "pipeline builds its stages' runners")
        from pipedecode.distributed.launch import check_environment, local_device

        local_device(check_environment(size)[2])     # this rank's GPU, before CUDA starts
    return size


def _start_pipeline(model: torch.nn.Module, size: int, config: RunnerConfig, seed: int,
                    timeout_s: float | None, free_model: bool):
    from pipedecode.distributed.pipeline import DEFAULT_TIMEOUT_S, start_pipeline

    pipeline = start_pipeline(model, size, config, seed=seed,
                              timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    if free_model:          # built here: the stage holds its tensors, the rest can go
        model.to("meta")
    return pipeline


def _cost_model(model: torch.nn.Module, profile):
    from pipedecode.models import model_shape
    from pipedecode.planner.cost import CostModel

    dtype_bytes = next(model.parameters()).element_size()
    return CostModel(dataclasses.replace(model_shape(model), dtype_bytes=dtype_bytes), profile)
