"""The GPU timer's method on a fake clock (CPU), and on the GPU where there is one."""

import pytest
import torch

from pipedecode.runtime import timing


class _Clock:
    """Stands in for CUDA events: each fn call advances a clock by its own duration."""

    def __init__(self):
        self.now_ms = 0.0

    def event(self, enable_timing=False):
        clock = self

        class Event:
            def record(self, stream=None):
                self.at = clock.now_ms

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return end.at - self.at

        return Event()


@pytest.fixture
def clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(torch.cuda, "Event", clock.event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    return clock


def test_samples_are_per_call_after_untimed_warmup(clock):
    durations = iter([100.0, 100.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0])   # ms; warm-up first

    def fn():
        clock.now_ms += next(durations)

    assert timing.sample_us(fn, iters=2, repeats=3, warmup=2) == [1000.0, 2000.0, 5000.0]
    with pytest.raises(ValueError):
        timing.sample_us(fn, repeats=0)


def test_time_us_is_the_median(clock):
    durations = iter([0.0, 9.0, 1.0, 3.0])

    def fn():
        clock.now_ms += next(durations)

    assert timing.time_us(fn, repeats=3) == 3000.0


def test_rounds_rotate_the_order(clock):
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    medians, samples = timing.time_rounds(fns, rounds=3, iters=1)
    # each call: one warm-up and one timed call; round r starts with the r-th name
    assert order[::2] == list("abc" "bca" "cab")
    assert set(medians) == set("abc") and all(len(v) == 3 for v in samples.values())


def test_rotations_and_repeated():
    assert timing.rotations(10 * 2 ** 20, 50 * 2 ** 20) == 8
    assert timing.rotations(2 ** 30, 50 * 2 ** 20) == 1
    with pytest.raises(ValueError):
        timing.rotations(0, 1)
    assert timing.repeated(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert timing.repeated(["a", "b"], 1) == ["a", "b"]
    with pytest.raises(ValueError):
        timing.repeated([], 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graph_replays_time_their_kernels():
    x = torch.randn(4096, 4096, device="cuda")
    one = timing.capture(lambda: torch.matmul(x, x))
    four = timing.capture([lambda: torch.matmul(x, x)] * 4)
    t1, t4 = timing.time_us(one.replay), timing.time_us(four.replay)
    assert 2.5 * t1 < t4 < 6 * t1
    side = torch.cuda.Stream()
    together = timing.time_us(lambda: timing.replay_together([(one, side), (four, side)]))
    assert together > 0.8 * (t1 + t4)          # one stream: the two graphs run one after the other
