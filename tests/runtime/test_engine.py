import torch

from pipedecode.models import build_model
from pipedecode.runtime.engine import build_executor
from pipedecode.runtime.weights import pack_hf_model

from tests.runtime.static_steps import greedy_steps


def test_build_executor_packs_once_and_steps_like_packed_weights():
    model = build_model("tiny-qwen2", seed=9)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=gen) for n in (4, 7)]
    a = build_executor(model, batch_size=2, max_context=20)
    b = build_executor(pack_hf_model(model), batch_size=2, max_context=20)
    assert a.mode == b.mode == "sequential" and a.step.max_context == 20
    first, second = greedy_steps(a, prompts, 5), greedy_steps(b, prompts, 5)
    assert torch.equal(first.tokens, second.tokens) and first.tokens.shape == (2, 5)


def test_plan_for_plans_for_the_gpu_it_runs_on(monkeypatch):
    """device=None: the profile of the GPU found, not a fixed h100; explicit names still win."""
    from pipedecode.profiles import registry
    from pipedecode.profiles.analytic import BUILTIN
    from pipedecode.runtime.engine import plan_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(registry, "local_profile", lambda index=None: BUILTIN["a100"])
    schedule, reason = plan_for("llama-3-8b", [512] * 8)
    assert reason is None and schedule.device == "a100"
    schedule, _ = plan_for("llama-3-8b", [512] * 8, "h200")
    assert schedule.device == "h200"


def test_plan_for_without_a_gpu_plans_nothing(monkeypatch):
    from pipedecode.runtime.engine import plan_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_for("tiny-llama", [5, 9]) == (None, None)
