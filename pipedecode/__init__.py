"""pipedecode: interleave attention and linear layers of decode micro-batches on SM partitions.

Public face (imported lazily, so `import pipedecode` stays cheap):
  compile(model, ...)        a model that decodes through pipedecode's stages and schedule
  plan(model, device, ...)   the planner: a Schedule for a model shape, a device, a workload
  load_schedule(path)        a validated Schedule from JSON
  Schedule, ModelShape, DeviceProfile
  LLM(model, ...).generate(prompts, SamplingParams(...))   the engine: requests in, tokens out
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compile": "pipedecode.api",
    "plan": "pipedecode.planner",
    "load_schedule": "pipedecode.planner",
    "Schedule": "pipedecode.planner",
    "ModelShape": "pipedecode.models",
    "DeviceProfile": "pipedecode.profiles",
    "LLM": "pipedecode.engine",
    "SamplingParams": "pipedecode.engine",
    "RequestOutput": "pipedecode.engine",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipedecode' has no attribute {name!r}")
