"""SM partitions: the fallback without a GPU here; grants and disjointness on a GPU."""

import pytest
import torch

from pipedecode.errors import PartitionUnavailableError
from pipedecode.runtime import partitions

no_cuda = not torch.cuda.is_available()


@pytest.mark.skipif(not no_cuda, reason="checks the no-GPU fallback")
def test_support_says_why_without_a_gpu():
    ok, reason = partitions.partition_support()
    assert ok is False
    assert "CUDA GPU" in reason and "sequential" in reason


@pytest.mark.skipif(not no_cuda, reason="checks the no-GPU fallback")
def test_making_partitions_without_a_gpu_raises_the_sequential_error():
    with pytest.raises(PartitionUnavailableError, match="sequential"):
        partitions.make_partitions(64)
    with pytest.raises(PartitionUnavailableError):
        partitions.make_partition(32)


def test_rounding_rule_matches_hopper_granularity():
    assert partitions._granted_by_rule(66, 132, 9) == (72, 8, 8)
    assert partitions._granted_by_rule(3, 132, 9)[0] == 8
    assert partitions._granted_by_rule(131, 132, 9)[0] == 132


def test_pair_unpacks_memory_then_compute():
    a = partitions.Partition(40, 40, 8, 8, None, "torch", False)
    b = partitions.Partition(92, 92, 8, 8, None, "torch", False)
    memory, compute = partitions.PartitionPair(a, b, disjoint=False)
    assert (memory.granted_sms, compute.granted_sms) == (40, 92)


def test_check_turns_driver_errors_into_sentences():
    class Err(int):
        name = "CUDA_ERROR_NOT_SUPPORTED"

    with pytest.raises(PartitionUnavailableError, match="CUDA_ERROR_NOT_SUPPORTED.*sequential"):
        partitions._check((Err(801), None), "cuGreenCtxCreate")
    assert partitions._check((0, "x"), "ok") == "x"


@pytest.mark.gpu
@pytest.mark.skipif(no_cuda, reason="needs a CUDA GPU")
def test_gpu_driver_partitions_are_disjoint_and_granted():
    from pipedecode.runtime.kernels._elementwise import sm_ids

    ok, route = partitions.partition_support()
    if not ok:
        pytest.skip(route)
    pair = partitions.make_partitions(66)
    total = torch.cuda.get_device_properties(0).multi_processor_count
    assert pair.memory.granted_sms >= 66 and pair.memory.granted_sms % pair.memory.granularity == 0
    if route == "driver":
        assert pair.memory.granted_sms + pair.compute.granted_sms == total
    seen = []
    for part in pair:
        with torch.cuda.stream(part.stream):
            ids = sm_ids(4 * total, "cuda")
        part.stream.synchronize()
        seen.append(set(ids.tolist()))
        assert len(seen[-1]) <= part.granted_sms
    if pair.disjoint:
        assert not seen[0] & seen[1]


def test_without_cuda_bindings_pairs_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(partitions, "_gpu_problem", lambda index: None)
    monkeypatch.setattr(partitions.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(partitions, "cuda_driver", lambda: None)
    monkeypatch.setattr(partitions, "_torch_green_contexts", lambda: object())
    ok, reason = partitions.partition_support()
    assert not ok and "share SMs" in reason and "cuda-python" in reason
    with pytest.raises(PartitionUnavailableError, match="share SMs"):
        partitions.make_partitions(64)
    monkeypatch.setattr(partitions, "_torch_green_contexts", lambda: None)
    assert "neither" in partitions.partition_support()[1]


def test_unknown_route_is_a_value_error():
    with pytest.raises(ValueError, match="route"):
        partitions.make_partitions(64, route="magic")
