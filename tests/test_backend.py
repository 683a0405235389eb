"""The torch.compile backend: found by name through its entry point, exact, pass-through."""

import functools
import warnings
from importlib.metadata import entry_points

import pytest
import torch

from pipedecode.backend import BackendOptions, make_executor, pipedecode_backend
from pipedecode.errors import PipedecodeError
from pipedecode.models import build_model
from pipedecode.runtime.graph_decode import GraphDecode, NotServedWarning


def test_registered_once_through_the_entry_point():
    names = [ep.name for ep in entry_points(group="torch_dynamo_backends")]
    assert names.count("pipedecode") == 1
    assert "pipedecode" in torch._dynamo.list_backends(exclude_tags=())
    assert torch._dynamo.lookup_backend("pipedecode") is pipedecode_backend


def test_torch_compile_by_name_matches_eager(low_ridge):
    model = build_model("tiny-llama")
    record: list = []
    compiled = torch.compile(model, backend="pipedecode",
                             options={"device": low_ridge, "record": record})
    ids = torch.randint(0, 256, (64, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        got = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(record) == 1 and record[0].num_layers == 2
    # no KV cache here: at 5 query tokens even attention is over the 1 FLOP/B ridge
    attention = [c for c in record[0].node_classes().values() if c.role == "attention"]
    assert len(attention) == 2 and all(c.bound == "compute" for c in attention)


def test_graph_breaks_split_layers_and_pass_the_rest_through(low_ridge):
    model = build_model("tiny-mistral")
    record: list = []

    def step(ids):
        logits = model(ids, use_cache=False).logits
        torch._dynamo.graph_break()
        return torch.log_softmax(logits * 2.0, dim=-1)

    compiled = torch.compile(step, backend="pipedecode",
                             options={"device": low_ridge, "record": record})
    ids = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), step(ids), rtol=1e-5, atol=1e-5)
    assert len(record) == 1        # the log_softmax graph has no decoder layer: passed through


def test_graph_without_decoder_layers_runs_as_is():
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    assert pipedecode_backend(gm, [torch.randn(2, 4)]) == gm.forward


def test_options_are_validated_and_default_to_h100():
    assert BackendOptions.from_dict(None).device.name == "h100"
    with pytest.raises(PipedecodeError, match="unknown pipedecode backend option"):
        BackendOptions.from_dict({"devcie": "h100"})
    with pytest.raises(PipedecodeError, match="context_len"):
        BackendOptions.from_dict({"context_len": 0})
    with pytest.raises(PipedecodeError):
        BackendOptions.from_dict({"device": "no-such-gpu"})


def test_cpu_executor_is_the_staged_graph_itself():
    staged, gm = object(), torch.fx.symbolic_trace(torch.nn.Identity())
    assert make_executor(staged, gm, [torch.zeros(1)], BackendOptions.from_dict(None)) is staged
    never = BackendOptions.from_dict({"executor": "never"})
    assert make_executor(staged, gm, [torch.zeros(1)], never) is staged
    with pytest.raises(PipedecodeError, match="executor must be"):
        BackendOptions.from_dict({"executor": "gpu"})


def _generate_warned(model, new_tokens=5):
    """Greedy generate through the backend asked to serve every decode graph (CPU too):
    (what runs each graph, the NotServedWarning messages)."""
    runners: list = []
    backend = functools.partial(pipedecode_backend,
                                options={"executor": "always", "runners": runners})
    model.forward = torch.compile(model.forward, backend=backend, dynamic=False)
    ids = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       do_sample=False, cache_implementation="static")
    return runners, [str(w.message) for w in caught if w.category is NotServedWarning]


@pytest.mark.parametrize("overrides,reason", [
    (dict(attn_implementation="eager"), "no scaled_dot_product_attention"),
    (dict(hidden_act="gelu"), "MLP is not SiLU(gate) * up"),
])
def test_a_decode_graph_it_cannot_serve_says_why_once(overrides, reason):
    runners, said = _generate_warned(build_model("tiny-llama", **overrides))
    refused = [why for _, why in runners]           # the prompt's graph, then the decode graph
    assert len(refused) == 2 and "(prefill)" in refused[0] and reason in refused[1]
    # once for the decode graph's 4 steps, naming the reason; nothing for the prompt's graph
    assert said == [f"pipedecode: the decode step runs as the graph's stages, not on the "
                    f"executor: {refused[1]}"]


def test_a_served_decode_graph_says_nothing():
    runners, said = _generate_warned(build_model("tiny-llama"))
    assert said == []
    assert [r.calls for r in runners if isinstance(r, GraphDecode)] == \
        [{"executor": 4, "fallback": 0}]
