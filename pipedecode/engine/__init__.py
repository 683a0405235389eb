"""The engine: requests in, tokens out (LLM, SamplingParams), scheduled the TD-Pipe way.

  params.py         SamplingParams, RequestOutput, CompletionOutput (vLLM's shapes)
  sequence.py       a request's mutable state and its stop conditions
  block_manager.py  KV block ids and block tables (pure bookkeeping)
  predictor.py      output-length predictors (online estimator, oracle, any callable)
  scheduler.py      batches from the ready sequences, preemption, postprocessing (pure)
  policies.py       prefill-first and temporal (TD-Pipe) admission behind one interface
  sampler.py        greedy / temperature / top-k / top-p with per-request seeds
  runner.py         the ModelRunner contract the engine drives
  llm.py            LLM: the coordinator (loading.py resolves its model, stats.py reports)

Imported lazily, so the scheduler's modules load without torch's sampling code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLM": "pipedecode.engine.llm",
    "RequestError": "pipedecode.engine.llm",
    "GenerationError": "pipedecode.engine.llm",
    "SamplingParams": "pipedecode.engine.params",
    "RequestOutput": "pipedecode.engine.params",
    "CompletionOutput": "pipedecode.engine.params",
    "OnlineLengthEstimator": "pipedecode.engine.predictor",
    "OracleLengths": "pipedecode.engine.predictor",
    "ModelRunner": "pipedecode.engine.runner",
    "RunnerConfig": "pipedecode.engine.runner",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipedecode.engine' has no attribute {name!r}")
