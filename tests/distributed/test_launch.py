"""torchrun's environment: what is missing or mismatched is one line that says how to launch;
in a world of one process, the groups made and NVLink multicast switched off."""

import os

import pytest
import torch.distributed as dist

from pipedecode.distributed.launch import LaunchError, check_environment, join_world
from tests.distributed.spawn import free_port

TORCHRUN = dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                MASTER_PORT="29500")


def test_torchrun_variables_give_the_rank():
    assert check_environment(2, TORCHRUN) == (1, 2, 1)


@pytest.mark.parametrize("env, size, match", [
    ({}, 2, r"needs one process per stage started by torchrun \(RANK, WORLD_SIZE, LOCAL_RANK, "
            r"MASTER_ADDR, MASTER_PORT not set\); run: torchrun --nproc-per-node 2 "),
    (dict(TORCHRUN, WORLD_SIZE="4"), 2, "needs 2 processes, but torchrun started 4; run: "
                                        "torchrun --nproc-per-node 2"),
    (dict(TORCHRUN, RANK="x"), 2, "must be integers"),
    (dict(TORCHRUN, RANK="5"), 2, "outside the world of 2"),
    (TORCHRUN, 0, "positive integer"),
])
def test_a_wrong_launch_is_one_line_saying_how(env, size, match):
    with pytest.raises(LaunchError, match=match) as info:
        check_environment(size, env)
    assert "\n" not in str(info.value)


def test_a_world_of_one_joins_with_multicast_off(monkeypatch):
    for name in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")              # a value given is kept
    env = dict(TORCHRUN, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_PORT=str(free_port()))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        world = join_world(1)
        assert os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
        assert os.environ["NCCL_NVLS_ENABLE"] == "1"
        assert world.is_driver and world.world_size == 1 and world.backend == "gloo"
        assert world.processes == ((world.processes[0][0], os.getpid()),)
        assert dist.get_backend(world.control) == "gloo"
        with pytest.raises(LaunchError, match="already initialised with 1 processes, not 2"):
            monkeypatch.setenv("WORLD_SIZE", "2")
            join_world(2)
    finally:
        dist.destroy_process_group()
