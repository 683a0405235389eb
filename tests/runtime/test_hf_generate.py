import pytest
import torch

from pipedecode.models import build_model
from pipedecode.runtime.hf_generate import ExecutorGenerate, _pad_after_eos


def _left_padded(lens, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    longest = max(lens)
    ids = torch.zeros(len(lens), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, longest - n:] = torch.randint(1, vocab, (n,), generator=gen)
        mask[i, longest - n:] = 1
    return ids, mask


@pytest.mark.parametrize("preset,lens", [("tiny-llama", [5, 9, 2]), ("tiny-qwen2", [7, 7])])
def test_served_generate_equals_transformers(preset, lens):
    model = build_model(preset, seed=5)
    ids, mask = _left_padded(lens, model.config.vocab_size, seed=len(lens))
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                  eos_token_id=None)
    expected = model.generate(ids, **kwargs)
    served = ExecutorGenerate(model, cuda_only=False)
    got = served(ids, **kwargs)
    assert got is not None and torch.equal(got, expected)
    assert served.last_executor.mode == "sequential"


def test_unserved_calls_return_none():
    model = build_model("tiny-llama")
    ids = torch.ones(1, 3, dtype=torch.long)
    assert ExecutorGenerate(model)(ids, max_new_tokens=2) is None            # CPU tensors
    served = ExecutorGenerate(model, cuda_only=False)
    assert served(ids, max_new_tokens=2, do_sample=True) is None
    assert served(ids, max_new_tokens=2, num_beams=2) is None
    assert served(ids, max_new_tokens=2, min_new_tokens=2, eos_token_id=2) is None
    assert served(ids, max_new_tokens=2, streamer=object()) is None


def test_pad_after_eos_matches_transformers_convention():
    tokens = torch.tensor([[5, 2, 7, 8], [2, 9, 9, 9], [4, 4, 4, 4]])
    out = _pad_after_eos(tokens, [2], pad=0)
    assert out.tolist() == [[5, 2, 0, 0], [2, 0, 0, 0], [4, 4, 4, 4]]
    done = _pad_after_eos(torch.tensor([[5, 2, 7], [2, 9, 9]]), [2], pad=0)
    assert done.tolist() == [[5, 2], [2, 0]]      # every row finished at step 2: stop there
