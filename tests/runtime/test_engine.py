import pytest
import torch

from pipedecode.models import build_model
from pipedecode.runtime.engine import build_executor, generate
from pipedecode.runtime.weights import pack_hf_model


def test_build_executor_packs_once_and_generates_like_packed_weights():
    model = build_model("tiny-qwen2", seed=9)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=gen) for n in (4, 7)]
    a = generate(build_executor(model, batch_size=2, max_context=20), prompts, 5)
    b = generate(build_executor(pack_hf_model(model), batch_size=2, max_context=20), prompts, 5)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (2, 5)
    assert a.decode_steps == 3


def test_generate_rejects_bad_token_counts():
    executor = build_executor(build_model("tiny-llama"), batch_size=1, max_context=8)
    with pytest.raises(ValueError):
        generate(executor, [torch.tensor([1, 2])], 0)


def test_plan_and_build_runs_sequentially_without_a_gpu():
    from pipedecode.runtime.engine import plan_and_build

    model = build_model("tiny-llama", seed=3)
    executor = plan_and_build(model, context_lens=[5, 9], max_context=24)
    assert executor.mode == "sequential"
    prompts = [torch.arange(1, 5), torch.arange(3, 11)]
    assert generate(executor, prompts, 3).tokens.shape == (2, 3)


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
