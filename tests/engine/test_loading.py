"""A local model directory with its tokenizer: text in, text out, stop strings, profiles."""

import pytest
import torch

from pipedecode.engine.llm import LLM
from pipedecode.engine.loading import load_model_and_tokenizer
from pipedecode.engine.params import SamplingParams
from pipedecode.profiles.registry import resolve_profile
from pipedecode.errors import ProfileError, UnsupportedModelError
from pipedecode.models import build_model

from tests.engine.reference_runner import ReferenceRunner


def _word_tokenizer():
    """A word-level tokenizer over the tiny presets' 256 ids: "w5 w9" <-> [5, 9]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-with-tokenizer")
    build_model("tiny-llama", dtype=torch.float32, seed=0).save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    return str(path)


def _llm(path, **options):
    return LLM(path, device="h100", runner=ReferenceRunner.factory(num_blocks=40), block_size=4,
               **options)


def test_text_prompts_give_text_and_stop_strings_cut_it(model_dir):
    llm = _llm(model_dir)
    assert llm.tokenizer is not None
    prompts = ["w5 w17 w33 w9", "w100 w4"]
    free = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True),
                        use_tqdm=False)
    ids = [llm.tokenizer(p)["input_ids"] for p in prompts]
    assert [list(o.prompt_token_ids) for o in free] == ids
    assert [o.prompt for o in free] == prompts
    for o in free:
        assert o.outputs[0].text == " ".join(f"w{t}" for t in o.outputs[0].token_ids
                                             if t > 2)
    words = free[0].outputs[0].text.split()
    stop = words[3]                                    # the 4th generated word
    cut = llm.generate(prompts[:1], SamplingParams(max_tokens=8, temperature=0,
                                                   ignore_eos=True, stop=[stop, "zz"]),
                       use_tqdm=False)[0].outputs[0]
    first = words.index(stop)
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.token_ids == free[0].outputs[0].token_ids[:first + 1]
    assert cut.text == free[0].outputs[0].text[:free[0].outputs[0].text.index(stop)]


def test_a_model_object_takes_a_tokenizer_by_name(model_dir):
    model = build_model("tiny-llama", dtype=torch.float32, seed=0)
    llm = LLM(model, tokenizer=model_dir, device="h100",
              runner=ReferenceRunner.factory(num_blocks=40), block_size=4)
    out = llm.generate("w5 w6", SamplingParams(max_tokens=3, temperature=0), use_tqdm=False)
    assert out[0].outputs[0].text is not None
    with pytest.raises(ValueError, match="no tokenizer could be loaded"):
        load_model_and_tokenizer(model, "/nonexistent/tokenizer", None, 0)


def test_what_cannot_be_a_model_or_a_profile():
    with pytest.raises(TypeError, match="LLM\\(model\\)"):
        load_model_and_tokenizer(42, None, None, 0)
    with pytest.raises(UnsupportedModelError):
        load_model_and_tokenizer("not-a-preset", None, None, 0)
    with pytest.raises(ProfileError, match="unknown device profile"):
        resolve_profile("tpu-v9")
    assert resolve_profile("h200").name == "h200"
    if not torch.cuda.is_available():
        assert resolve_profile(None).name == "h100"
