import json

import pytest

from pipedecode.planner import plan
from pipedecode.planner.timeline import chrome_trace, timeline
from pipedecode.profiles.analytic import BUILTIN


@pytest.fixture(scope="module", params=["interleaved", "coresident", "sequential"])
def schedule(request, llama8b, coresident_profile):
    contexts = [512] * 384 + [2048] * 128 if request.param != "sequential" else [512] * 4
    if request.param == "coresident":
        s = plan(llama8b, coresident_profile(0.1), [512] * 1024, memory_sms_options=())
    else:
        s = plan(llama8b, BUILTIN["h200"], contexts)
    assert s.mode == request.param
    return s


def test_whole_step_adds_up_to_the_prediction(schedule):
    events = timeline(schedule)
    assert max(e.end_us for e in events) == pytest.approx(schedule.predicted_step_us)
    assert events[-1].stage == "head"


def test_ops_on_one_partition_never_overlap(schedule):
    for lane in ("memory", "compute", "all"):
        spans = sorted((e.start_us, e.end_us) for e in timeline(schedule) if e.partition == lane)
        assert all(a_end <= b_start + 1e-6 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_every_layer_runs_every_stage_of_every_micro_batch_once(schedule):
    events = timeline(schedule)
    layers = schedule.model.num_layers
    for mb in schedule.micro_batches:
        for stage in ("pre_attn", "attention", "post_attn"):
            got = sorted(e.layer for e in events if e.stage == stage and e.micro_batch == mb.index)
            assert got == list(range(layers))


@pytest.mark.parametrize("before,after", [("pre_attn", "attention"), ("attention", "post_attn")])
def test_each_stage_follows_the_one_it_depends_on(schedule, before, after):
    events = timeline(schedule)
    done = {(e.micro_batch, e.layer): e.end_us for e in events if e.stage == before}
    for e in events:
        if e.stage == after:
            assert e.start_us >= done[e.micro_batch, e.layer] - 1e-6


def test_chrome_trace_is_trace_event_json(schedule):
    trace = json.loads(json.dumps(chrome_trace(schedule)))
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(timeline(schedule))
    assert {e["tid"] for e in spans} <= {1, 2, 3}
    assert any(e["ph"] == "M" and e["name"] == "thread_name" for e in trace["traceEvents"])



def test_coresident_lanes_name_both_streams_on_every_sm(llama8b, coresident_profile):
    s = plan(llama8b, coresident_profile(0.1), [512] * 1024, memory_sms_options=())
    names = {e["args"]["name"] for e in chrome_trace(s)["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"memory stream (all 132 SMs, attention within 64 KiB)",
                     "compute stream (all 132 SMs)", "all SMs (132)"}
