import pytest

import networkx as nx

from pipedecode.runtime.program import (Op, RowLayout, Slot, build_program, dependency_graph,
                                        issue_order, serial_order, stage_partitions)


def test_row_layout_makes_micro_batches_contiguous():
    layout = RowLayout.from_micro_batches([[4, 0, 2], [1, 3]], 5)
    assert layout.order == (4, 0, 2, 1, 3)
    assert layout.rows(1) == slice(3, 5)
    for request, row in enumerate(layout.inverse):
        assert layout.order[row] == request


@pytest.mark.parametrize("groups", [[[0, 1], [1, 2]], [[0, 1]], [[0, 1], []]])
def test_row_layout_rejects_bad_micro_batches(groups):
    with pytest.raises(ValueError):
        RowLayout.from_micro_batches(groups, 3)


def _finish_slots(program):
    """slot index where each op runs."""
    return {op: j for j, slot in enumerate(program)
            for op in ((slot.memory,) if slot.memory else ()) + slot.compute}


@pytest.mark.parametrize("n,layers", [(1, 3), (2, 1), (2, 4), (3, 2)])
def test_program_respects_every_dependency(n, layers):
    program = build_program(n, layers)
    where = _finish_slots(program)
    ops = serial_order(program)
    assert len(ops) == len(set(ops)) == n * (2 + 3 * layers)
    position = {op: i for i, op in enumerate(ops)}
    for op in ops:
        if op.stage == "attention":
            pre = next(o for o in ops if o.stage == "pre_attn" and o.layer == op.layer
                       and o.micro_batch == op.micro_batch)
            assert position[pre] < position[op]
            if n >= 2:  # the overlap promise: never waits on the same slot's compute
                assert where[pre] < where[op]
        if op.stage == "post_attn":
            att = next(o for o in ops if o.stage == "attention" and o.layer == op.layer
                       and o.micro_batch == op.micro_batch)
            assert position[att] < position[op]
            if n >= 2:
                assert where[att] < where[op]


@pytest.mark.parametrize("n,layers", [(1, 3), (2, 1), (2, 4), (3, 2)])
def test_dependency_graph_is_acyclic_and_the_issue_order_respects_it(n, layers):
    program = build_program(n, layers)
    graph = dependency_graph(program)
    assert nx.is_directed_acyclic_graph(graph)
    kinds = [kind for _, _, kind in graph.edges(data="kind")]
    assert kinds.count("ready") == kinds.count("done") == n * layers
    position = {op: i for i, op in enumerate(issue_order(program))}
    assert all(position[u] < position[v] for u, v in graph.edges)   # every wait after its record
    assert serial_order(program) == issue_order(program)
    # the head of each micro-batch depends on every layer of it
    head = Op("head", -1, 0)
    assert {Op("attention", l, 0) for l in range(layers)} <= nx.ancestors(graph, head)


def test_a_program_whose_waits_form_a_cycle_is_refused():
    pre = [Op("pre_attn", 0, m) for m in (0, 1)]
    att = [Op("attention", 0, m) for m in (0, 1)]
    post = [Op("post_attn", 0, m) for m in (0, 1)]
    # the memory stream runs micro-batch 1's attention first, but its pre_attn is queued behind
    # post_attn(0), which waits for micro-batch 0's attention: a deadlock on the GPU
    program = (Slot(None, (pre[0],)), Slot(att[1], (post[0], pre[1])), Slot(att[0], (post[1],)))
    assert not nx.is_directed_acyclic_graph(dependency_graph(program))
    with pytest.raises(nx.NetworkXUnfeasible):
        serial_order(program)


def test_serial_order_moves_an_op_issued_too_early():
    pre, att = Op("pre_attn", 0, 0), Op("attention", 0, 0)
    program = (Slot(att, ()), Slot(None, (pre, Op("post_attn", 0, 0))))
    assert issue_order(program)[0] == att
    assert serial_order(program) == [pre, att, Op("post_attn", 0, 0)]


def test_program_overlaps_attention_with_other_micro_batch():
    program = build_program(2, 3)
    for slot in program:
        if slot.memory is not None and slot.compute:
            assert all(op.micro_batch != slot.memory.micro_batch for op in slot.compute)


class _Slot:
    def __init__(self, stage, partition):
        self.stage, self.partition = stage, partition


class _Schedule:
    def __init__(self, slots):
        self.slots = slots


def test_stage_partitions_reads_schedule_and_rejects_mixed_placement():
    ok = _Schedule([_Slot("attention", "memory"), _Slot("pre_attn", "compute"),
                    _Slot("post_attn", "compute")])
    assert stage_partitions(ok)["attention"] == "memory"
    bad = _Schedule([_Slot("attention", "memory"), _Slot("pre_attn", "memory")])
    with pytest.raises(ValueError):
        stage_partitions(bad)


def test_planner_schedules_match_the_executor_pattern():
    from pipedecode.models import model_shape
    from pipedecode.planner import plan
    from pipedecode.runtime.program import manual_schedule, pattern_mismatch

    shape = model_shape("llama-3-8b")
    assert pattern_mismatch(manual_schedule(shape, [9] * 4, [[0, 1], [2, 3]], 32, 100)) is None
    planned = plan("llama-3-8b", "h100", [512] * 512, time_limit_s=10)
    if planned.mode == "interleaved":
        assert pattern_mismatch(planned) is None


def test_pattern_mismatch_names_the_wrong_phase():
    from pipedecode.runtime.program import pattern_mismatch

    class S:
        def __init__(self, stage, mb, phase):
            self.stage, self.micro_batch, self.phase = stage, mb, phase

    class Sched:
        micro_batches = (0, 1)
        slots = (S("attention", 1, 0), S("pre_attn", 0, 0))

    assert "phase 0" in pattern_mismatch(Sched())
