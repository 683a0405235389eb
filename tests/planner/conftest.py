import pytest

from pipedecode.models import ModelShape


@pytest.fixture(scope="session")
def llama8b() -> ModelShape:
    # Llama-3-8B's shape, built directly so the planner tests need no transformers config.
    return ModelShape(name="llama-3-8b", family="llama", hidden_size=4096,
                      intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                      head_dim=128, vocab_size=128256)


@pytest.fixture(scope="session")
def coresident_profile(llama8b):
    """make(penalty, speed=1.0): BUILTIN h200 with hand-made co-resident samples of Llama-3-8B
    at 256 x 512, 512 x 512 and 1024 x 256 (64 KiB): each side alone `speed` x the cost model's
    whole-GPU stage time, together max + penalty x min."""
    import dataclasses

    from pipedecode.planner.cost import CostModel
    from pipedecode.profiles import CoresidentSample
    from pipedecode.profiles.analytic import BUILTIN

    def make(penalty: float, speed: float = 1.0, budget: int = 65536):
        base = BUILTIN["h200"]
        cost = CostModel(llama8b, base)
        samples = []
        for tokens, ctx in ((256, 512), (512, 512), (1024, 256)):
            a = cost.attention_us(tokens, tokens * ctx, 132) * speed
            c = cost.linear_us(tokens, 132) * speed
            samples.append(CoresidentSample("llama-3-8b", tokens, ctx, budget, a, c,
                                            max(a, c) + penalty * min(a, c), a / speed,
                                            c / speed))
        return dataclasses.replace(base, coresident_samples=tuple(samples))

    return make
