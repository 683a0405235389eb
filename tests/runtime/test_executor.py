import pytest
import torch

from pipedecode.models import build_model, model_shape
from pipedecode.planner.schedule import MicroBatch, Schedule, Slot
from pipedecode.runtime.executor import Executor, run_serial
from pipedecode.runtime.program import manual_schedule
from pipedecode.runtime.weights import pack_hf_model

from tests.runtime.static_steps import greedy_steps

PRESETS = ["tiny-llama", "tiny-llama-mha", "tiny-qwen2"]


def _prompts(lengths, seed=0, vocab=256):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]


def _hf_greedy(model, prompt, new_tokens):
    out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]),
                         max_new_tokens=new_tokens, do_sample=False,
                         min_new_tokens=new_tokens, return_dict_in_generate=True,
                         output_logits=True, pad_token_id=0)
    return out.sequences[0, prompt.numel():], torch.stack([l[0] for l in out.logits])


def _schedule(preset, lens, groups, mode="interleaved"):
    if mode == "interleaved":
        return manual_schedule(model_shape(preset), lens, groups, 48, 84)
    mbs = tuple(MicroBatch(i, tuple(g), tuple(lens[r] for r in g)) for i, g in enumerate(groups))
    slots = tuple(Slot(stage, 0, "all") for stage in ("pre_attn", "attention", "post_attn"))
    return Schedule(model=model_shape(preset), device="h100", mode="sequential", memory_sms=0,
                    compute_sms=132, micro_batches=mbs, slots=slots, predicted_step_us=10.0,
                    sequential_step_us=10.0, roofline_floor_us=8.0)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("lengths", [[7], [3, 11, 5], [9, 2, 6, 4, 13]])
def test_sequential_matches_transformers_eager(preset, lengths):
    model = build_model(preset, attn_implementation="eager", seed=1)
    prompts = _prompts(lengths, seed=len(lengths))
    executor = Executor(pack_hf_model(model), len(prompts), max_context=32)
    result = greedy_steps(executor, prompts, 6, keep_logits=True)
    assert executor.mode == "sequential"
    for i, prompt in enumerate(prompts):
        tokens, logits = _hf_greedy(model, prompt, 6)
        assert result.tokens[i].tolist() == tokens.tolist()
        mine = torch.stack([step[i] for step in result.logits])
        torch.testing.assert_close(mine, logits.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("groups", [[[3, 0], [4, 1, 2]], [[3], [0, 4], [1, 2]]])
def test_interleaved_order_on_one_stream_matches_sequential(preset, groups):
    model = build_model(preset, seed=2)
    weights = pack_hf_model(model)
    lens = [5, 12, 3, 8, 6]
    schedule = _schedule(preset, lens, groups)
    seq = Executor(weights, 5, max_context=24)
    inter = Executor(weights, 5, max_context=24, schedule=schedule)
    assert inter.layout.order == (3, 0, 4, 1, 2)
    prompts = _prompts(lens, seed=5)
    a = greedy_steps(seq, prompts, 4, keep_logits=True)
    # the same prefill, then the interleaved program run serially on this stream
    b = greedy_steps(inter, prompts, 1, keep_logits=True)
    tokens = b.tokens[:, 0][torch.tensor(inter.layout.order)]
    ctx = torch.tensor([lens[r] + 1 for r in inter.layout.order], dtype=torch.int32)
    for step in range(1, 4):
        inter.set_inputs(tokens, ctx)
        logits = run_serial(inter.step, inter.program, inter.layout)
        expected = a.logits[step][torch.tensor(inter.layout.order)]
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        tokens, ctx = logits.argmax(-1), ctx + 1


def test_interleaved_schedule_falls_back_to_sequential_without_partitions():
    model = build_model("tiny-llama", seed=3)
    lens = [4, 4, 4]
    executor = Executor(pack_hf_model(model), 3, max_context=16,
                        schedule=_schedule("tiny-llama", lens, [[0, 2], [1]]))
    assert executor.mode == "sequential"
    assert "GPU" in executor.fallback_reason or "CUDA" in executor.fallback_reason
    prompts = _prompts(lens, seed=7)
    result = greedy_steps(executor, prompts, 3)
    for i, prompt in enumerate(prompts):
        assert result.tokens[i].tolist() == _hf_greedy(model, prompt, 3)[0].tolist()


def test_sequential_schedule_and_wrong_batch_are_handled():
    model = build_model("tiny-llama", seed=4)
    executor = Executor(pack_hf_model(model), 2, max_context=16,
                        schedule=_schedule("tiny-llama", [3, 3], [[1, 0]], mode="sequential"))
    assert executor.mode == "sequential" and executor.fallback_reason is None
    with pytest.raises(ValueError):
        greedy_steps(executor, _prompts([3]), 2)
    with pytest.raises(ValueError):
        greedy_steps(executor, _prompts([3, 15]), 4)


def test_step_writes_no_new_tensors_between_steps():
    model = build_model("tiny-llama-mha", seed=5)
    executor = Executor(pack_hf_model(model), 2, max_context=16)
    first = executor.run()
    pointers = {t.data_ptr() for t in executor.step.k_cache}
    assert executor.run().data_ptr() == first.data_ptr()
    assert pointers == {t.data_ptr() for t in executor.step.k_cache}


def test_graph_mode_is_checked_and_described():
    model = build_model("tiny-llama", seed=4)
    with pytest.raises(ValueError, match="graphs"):
        Executor(pack_hf_model(model), 2, max_context=16, graphs="two")
    info = Executor(pack_hf_model(model), 2, max_context=16, graphs="one").describe()
    assert info["graph_mode"] is None and info["mode"] == "sequential"     # no graphs on CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graphs", ["per_partition", "one"])
@pytest.mark.parametrize("groups", [[[0, 2], [1, 3]], [[0], [2, 3], [1]]])
def test_gpu_interleaved_graph_matches_sequential(groups, graphs):
    """Interleaved graphs (one per partition with flags, or one spanning both streams) decode
    the tokens of the sequential graph; per partition, every flag is clear after each step."""
    model = build_model("tiny-llama", seed=6, dtype=torch.bfloat16).cuda()
    weights = pack_hf_model(model)
    lens = [5, 9, 3, 7]
    schedule = _schedule("tiny-llama", lens, groups)
    prompts = _prompts(lens, seed=8)
    seq = greedy_steps(Executor(weights, 4, max_context=32), prompts, 8)
    inter_exec = Executor(weights, 4, max_context=32, schedule=schedule, graphs=graphs)
    inter = greedy_steps(inter_exec, prompts, 8)
    assert inter_exec.mode == "interleaved", inter_exec.fallback_reason
    assert inter_exec.describe()["graph_mode"] == graphs
    if graphs == "per_partition":
        assert inter_exec.flags is not None and int(inter_exec.flags.values.abs().sum()) == 0
    assert torch.equal(seq.tokens, inter.tokens)
