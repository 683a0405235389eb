"""Capture a Llama-family decode step (or prefill) as one torch.fx graph through TorchDynamo.

Level: torch IR, the graph Dynamo hands a backend, not ATen through AOTAutograd. At this level
a linear is one `torch._C._nn.linear` node and attention one `scaled_dot_product_attention`
node, so the classification pass reads their shapes directly; each node keeps Dynamo's
`nn_module_stack`, which names its decoder layer; and it is the very graph the
`torch.compile(backend="pipedecode")` backend receives, so analysis and execution share one
path. At ATen level linears become views + mm, sdpa becomes backend-specific ops, the layer
names are harder to recover, and functionalisation adds a copy to every KV-cache write.

The KV cache is a transformers `StaticCache`, filled once eagerly so that its key and value
tensors exist before tracing: Dynamo then lifts them as graph inputs (placeholders named
`..past_key_values_layers_<i>_keys`), written in place by `index_copy_`. Knows nothing of
devices, costs or stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from pipedecode.errors import CaptureError, WorkloadError
from pipedecode.models import SUPPORTED_FAMILIES, check_model, make_config


@dataclass(frozen=True)
class CapturedGraph:
    """One captured step: the graph, the inputs it was traced with, and its workload."""

    gm: torch.fx.GraphModule
    example_inputs: tuple
    phase: str              # "decode" or "prefill"
    batch_size: int
    query_len: int          # new tokens per sequence in this step (1 for decode)
    context_len: int        # tokens in the cache after this step (the live KV length)
    max_cache_len: int      # the static buffer length


def check_workload(batch_size: int, context_len: int, max_cache_len: int | None = None) -> None:
    """Raise WorkloadError for a batch or context that cannot be captured."""
    for name, value in (("batch", batch_size), ("context", context_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WorkloadError(f"{name} must be a positive integer, got {value!r}; "
                                  f"pass e.g. --{name} 1")
    if max_cache_len is not None and max_cache_len < context_len:
        raise WorkloadError(f"max_cache_len ({max_cache_len}) must be at least the context "
                              f"length ({context_len})")


def meta_model(spec, *, dtype: torch.dtype = torch.bfloat16):
    """A model with real shapes and no weights (meta device): capture and analyze only."""
    import transformers

    config = make_config(spec)
    config._attn_implementation = "sdpa"
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    with torch.device("meta"):
        model = cls(config).to(dtype)
    return model.eval()


def dynamo_graph(fn, *args, **kwargs) -> tuple[torch.fx.GraphModule, tuple]:
    """Run `fn` once under TorchDynamo (fullgraph) and return the graph and its example inputs."""
    graphs: list[tuple[torch.fx.GraphModule, tuple]] = []

    def record(gm, example_inputs):
        graphs.append((gm, tuple(example_inputs)))
        return gm.forward

    compiled = torch.compile(fn, backend=record, fullgraph=True, dynamic=False)
    try:
        # A capture adds a cache entry on the model's forward; don't let many captures
        # exhaust the recompile limit that user code compiles against.
        with torch._dynamo.config.patch(recompile_limit=1 << 20), torch.no_grad():
            compiled(*args, **kwargs)
    except torch._dynamo.exc.Unsupported as exc:
        raise CaptureError(f"TorchDynamo could not capture the step as one graph: "
                           f"{str(exc).splitlines()[0]}. Use attn_implementation='sdpa' and a "
                           f"supported transformers version") from None
    if len(graphs) != 1:
        raise CaptureError(f"expected one graph from TorchDynamo, got {len(graphs)}")
    return graphs[0]


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def capture_step(model, *, batch_size: int, query_len: int, context_len: int,
                 max_cache_len: int | None = None, phase: str = "decode") -> CapturedGraph:
    """Capture one forward of `query_len` new tokens per sequence against a StaticCache."""
    from transformers import StaticCache

    check_model(model)
    max_cache_len = max_cache_len or context_len
    check_workload(batch_size, context_len, max_cache_len)
    if not 0 < query_len <= context_len:
        raise WorkloadError(f"query length {query_len} must be in [1, context {context_len}]")
    device = _device_of(model)
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    first = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    with torch.no_grad():           # allocates the cache tensors, so Dynamo lifts them as inputs
        model(input_ids=first, past_key_values=cache, use_cache=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, query_len), generator=gen)
    positions = torch.arange(context_len - query_len, context_len).expand(batch_size, -1)
    gm, example_inputs = dynamo_graph(
        model.forward, input_ids=ids.to(device), position_ids=positions.to(device),
        past_key_values=cache, use_cache=True)
    return CapturedGraph(gm, example_inputs, phase, batch_size, query_len, context_len,
                         max_cache_len)


def capture_decode(model, *, batch_size: int, context_len: int,
                   max_cache_len: int | None = None) -> CapturedGraph:
    """The decode step: one new token per sequence, `context_len` tokens in the cache after it."""
    return capture_step(model, batch_size=batch_size, query_len=1, context_len=context_len,
                        max_cache_len=max_cache_len, phase="decode")


def capture_prefill(model, *, batch_size: int, prompt_len: int,
                    max_cache_len: int | None = None) -> CapturedGraph:
    """The prefill step: `prompt_len` tokens per sequence written into an empty cache."""
    return capture_step(model, batch_size=batch_size, query_len=prompt_len,
                        context_len=prompt_len, max_cache_len=max_cache_len, phase="prefill")
