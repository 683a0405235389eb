import pytest
import torch

from pipedecode.errors import PartitionUnavailableError
from pipedecode.runtime import stream_flags


def test_flags_need_cuda_bindings(monkeypatch):
    monkeypatch.setattr(stream_flags, "cuda_driver", lambda: None)
    with pytest.raises(PartitionUnavailableError, match="cuda.bindings"):
        stream_flags.StreamFlags({"ready": 2})


def _ping_pong(flags, a, b, x, y, start, layers):
    """Stream a: x[l] from y[l-1] (after done[l-1]), then ready[l]; stream b: y[l] = 2 x[l]
    after ready[l], then done[l]. Each side is captured alone: the edges are the flags."""
    def side_a():
        for layer in range(layers):
            if layer:
                flags.wait("done", layer - 1, a)
                torch.add(y[layer - 1], 1, out=x[layer])
            else:
                x[0].copy_(start.expand_as(x[0]))
            torch.cuda._sleep(10_000)       # b must really wait
            flags.signal("ready", layer, a)
        flags.wait("done", layers - 1, a)

    def side_b():
        for layer in range(layers):
            flags.wait("ready", layer, b)
            torch.cuda._sleep(10_000)
            torch.mul(x[layer], 2, out=y[layer])
            flags.signal("done", layer, b)
    return side_a, side_b


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_two_graphs_wait_on_each_other_through_flags():
    """Two graphs with edges both ways, launched in either order, compute what one stream
    would, every replay; every flag is clear after each."""
    layers, dev = 6, torch.device("cuda")
    flags = stream_flags.StreamFlags({"ready": layers, "done": layers}, dev)
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    x = [torch.zeros(4096, device=dev) for _ in range(layers)]
    y = [torch.zeros(4096, device=dev) for _ in range(layers)]
    start = torch.zeros(1, device=dev)
    side_a, side_b = _ping_pong(flags, a, b, x, y, start, layers)
    graphs = []
    for side, stream in ((side_a, a), (side_b, b)):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            side()
        graphs.append((graph, stream))
    torch.cuda.synchronize()
    main = torch.cuda.current_stream()
    for step in range(40):
        start.fill_(float(step))
        for graph, stream in graphs if step % 2 else graphs[::-1]:
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                graph.replay()
        for _, stream in graphs:
            main.wait_stream(stream)
        value = float(step)
        for _ in range(layers - 1):
            value = 2 * value + 1
        assert y[-1][0].item() == 2 * value, step
        assert int(flags.values.abs().sum()) == 0
