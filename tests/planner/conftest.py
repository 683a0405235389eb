import pytest

from pipedecode.models import ModelShape


@pytest.fixture(scope="session")
def llama8b() -> ModelShape:
    # Llama-3-8B's shape, built directly so the planner tests need no transformers config.
    return ModelShape(name="llama-3-8b", family="llama", hidden_size=4096,
                      intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                      head_dim=128, vocab_size=128256)
