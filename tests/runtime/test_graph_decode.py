"""The torch.compile backend's decode graph on the executor (CPU, executor="always").

Each test that runs generate checks that its decode step was served by the executor: a graph
turned away (run as stages, exact) fails them instead of passing unseen."""

import functools
import warnings

import pytest
import torch

from pipedecode.backend import pipedecode_backend
from pipedecode.models import build_model
from pipedecode.runtime.graph_decode import GraphDecode, NotServedWarning, _contiguous, recognize


def _prompts(batch, length, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for b in range(batch):                  # ragged: left padding of 0..length-2 tokens
        mask[b, :int(torch.randint(0, length - 1, (1,), generator=gen))] = 0
    return ids, mask


def _compile(model, runners, graphs=None, executor="always"):
    backend = functools.partial(pipedecode_backend,
                                options={"executor": executor, "runners": runners})

    def recording(gm, example_inputs):
        if graphs is not None:
            graphs.append((gm, list(example_inputs)))
        return backend(gm, example_inputs)

    model.forward = torch.compile(model.forward, backend=recording, dynamic=False)
    return model


def _generate(model, ids, mask, new_tokens=6):
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                          cache_implementation="static", output_logits=True,
                          return_dict_in_generate=True)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-llama-mha"])
def test_generate_through_the_executor_matches_eager(preset):
    model = build_model(preset).eval()
    ids, mask = _prompts(4, 9, seed=len(preset))
    expected = _generate(model, ids, mask)
    runners: list = []
    got = _generate(_compile(model, runners), ids, mask)
    assert _served(runners).calls == {"executor": 5, "fallback": 0}
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    declined = [r for r in runners if isinstance(r, tuple)]
    assert len(declined) == 1 and "prefill" in declined[0][1]     # the prompt's graph


def _served(runners):
    """The one GraphDecode among the runners; fails, saying why, where none was made."""
    served = [r for r in runners if isinstance(r, GraphDecode)]
    refused = [r[1] for r in runners if isinstance(r, tuple) and "prefill" not in r[1]]
    assert len(served) == 1, f"the decode graph was not served: {refused}"
    return served[0]


def _first_step_args(graphs, layout, prompt_len):
    """The decode graph's example inputs (the first decode call's ids, positions and mask) with
    the cache counters set back to that call's slot (generate moved them on since)."""
    example = next(e for g, e in graphs if not isinstance(recognize(g, e), str))
    args = [t.clone() for t in example]
    for i in layout.counters:
        args[i].fill_(prompt_len)
    return args


def _served_first_step(model, ids, mask, new_tokens=3, executor="always"):
    """Generate through the backend; (the decode graph's GraphDecode, its first step's args)."""
    runners, graphs = [], []
    _generate(_compile(model, runners, graphs, executor=executor), ids, mask, new_tokens)
    runner = _served(runners)
    assert runner.calls == {"executor": new_tokens - 1, "fallback": 0}
    return runner, _first_step_args(graphs, runner.layout, prompt_len=ids.shape[1])


def test_a_mask_the_executor_cannot_read_runs_the_stages_and_says_so_once():
    ids, mask = _prompts(3, 8, seed=5)
    runner, args = _served_first_step(build_model("tiny-llama").eval(), ids, mask)
    layout = runner.layout
    holed = args[layout.attention_mask]
    holed[1, ..., 2] = ~holed[1, ..., 2] if holed.dtype == torch.bool else -holed[1, ..., 2]
    twin = [t.clone() for t in args]
    again = [t.clone() for t in args]
    before = dict(runner.calls)
    with pytest.warns(NotServedWarning, match="mask is not a left-padded") as caught:
        out = runner(*args)
        runner(*again)                           # the same reason again: no second warning
    assert len([w for w in caught if w.category is NotServedWarning]) == 1
    assert runner.calls["fallback"] == before["fallback"] + 2
    torch.testing.assert_close(out[0], runner.fallback(*twin)[0])
    for i in layout.keys + layout.counters:      # the stages wrote the cache as the graph does
        assert torch.equal(args[i], twin[i])


def test_served_step_writes_the_cache_and_counters_as_the_graph_does():
    ids, mask = _prompts(3, 6, seed=9)
    runner, args = _served_first_step(build_model("tiny-mistral").eval(), ids, mask)
    layout = runner.layout
    twin = [t.clone() for t in args]
    out = runner(*args)
    ref = runner.fallback(*twin)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    for i in layout.counters:
        assert torch.equal(args[i], twin[i])
    for i in layout.keys + layout.values:
        torch.testing.assert_close(args[i], twin[i], rtol=1e-5, atol=1e-5)


def test_a_dynamic_cache_is_not_served_and_says_why():
    ids, mask = _prompts(2, 5, seed=1)
    refused: list = []
    model = _compile(build_model("tiny-llama").eval(), refused)
    with pytest.warns(NotServedWarning, match="StaticCache is needed"):
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert not [r for r in refused if isinstance(r, GraphDecode)]
    reasons = [r[1] for r in refused if "prefill" not in r[1]]
    assert reasons and all("keys come from cat" in why for why in reasons)
    runners: list = []                           # the same model with a static cache is served
    _generate(_compile(build_model("tiny-llama").eval(), runners), ids, mask, new_tokens=3)
    assert _served(runners).calls == {"executor": 2, "fallback": 0}


def test_auto_leaves_cpu_graphs_to_the_stages():
    model = build_model("tiny-llama").eval()
    runners, graphs = [], []
    ids, mask = _prompts(2, 5, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotServedWarning)     # CPU under "auto": nothing to say
        _generate(_compile(model, runners, graphs, executor="auto"), ids, mask, new_tokens=3)
    assert runners == []
    served = [recognize(g, e) for g, e in graphs]          # what "always" would serve
    assert len([layout for layout in served if not isinstance(layout, str)]) == 1


def _moved(model, seed):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=gen).mul_(0.1).add_(t)
            for name, t in model.state_dict().items()}


def test_weights_updated_in_place_are_decoded_by_the_backend():
    model, reference = build_model("tiny-qwen2", seed=2).eval(), build_model("tiny-qwen2", seed=2)
    ids, mask = _prompts(3, 7, seed=11)
    runners: list = []
    compiled = _compile(model, runners)
    before = _generate(compiled, ids, mask).sequences
    runner = _served(runners)
    weights = runner.executor.step.weights
    update = _moved(model, seed=12)
    model.load_state_dict(update)               # in place: the same parameters, new values
    reference.load_state_dict(update)
    expected = _generate(reference, ids, mask)
    got = _generate(compiled, ids, mask)
    assert not torch.equal(before, expected.sequences)     # the update changes the tokens
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert _served(runners) is runner and runner.calls == {"executor": 10, "fallback": 0}
    assert runner.executor.step.weights is weights          # repacked in place, not rebuilt


def test_contiguous_keeps_sizes_and_lengths():
    from pipedecode.planner import plan

    schedule = plan("llama-3-8b", "h100", [4096, 128, 4000, 64, 3900, 100], num_micro_batches=2)
    out = _contiguous(schedule)
    sizes = [len(mb.request_ids) for mb in sorted(schedule.micro_batches, key=lambda m: m.index)]
    assert [len(mb.request_ids) for mb in out.micro_batches] == sizes
    assert [r for mb in out.micro_batches for r in mb.request_ids] == list(range(6))
    assert _contiguous(None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_compile_backend_serves_decode_on_the_gpu(rel_err):
    """bf16 on the GPU (Triton kernels, a CUDA graph, the plan's guard): generate is served, and
    one step from the same inputs gives the graph's own logits and cache writes within bf16
    error (whole generations may part at a bf16 near-tie, so they are not compared)."""
    model = build_model("tiny-llama", dtype=torch.bfloat16, seed=3).cuda().eval()
    ids, mask = _prompts(6, 10, seed=4)
    runners, graphs = [], []
    got = _generate(_compile(model, runners, graphs, executor="auto"), ids.cuda(), mask.cuda(),
                    new_tokens=8)
    assert got.sequences.shape == (6, 18)
    runner = _served(runners)
    assert runner.calls == {"executor": 7, "fallback": 0}
    assert runner.executor.describe()["graphs"]
    args = _first_step_args(graphs, runner.layout, prompt_len=ids.shape[1])
    twin = [t.clone() for t in args]
    out, ref = runner(*args)[0], runner.fallback(*twin)[0]
    assert rel_err(out.float(), ref.float()) < 1e-2
    for i in runner.layout.keys + runner.layout.values:
        assert rel_err(args[i].float(), twin[i].float()) < 1e-2
