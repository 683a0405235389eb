import json

import pytest

from pipedecode.errors import ProfileError
from pipedecode.profiles import (PROFILE_VERSION, AttentionPoint, CoresidentSample, CorunSample,
                                 DeviceProfile, GemmPoint)
from pipedecode.profiles.analytic import BUILTIN


def _measured() -> DeviceProfile:
    base = BUILTIN["h100"]
    return DeviceProfile(
        name="toy", sm_count=132, sm_granularity=8, min_partition_sms=8,
        peak_flops_per_s=base.peak_flops_per_s, hbm_bytes_per_s=base.hbm_bytes_per_s,
        memory_bytes=base.memory_bytes, source="measured",
        bandwidth_by_sms=((16, 1.1e12), (132, 3.0e12)),
        gemm_latency=(GemmPoint(64, 4096, 4096, 132, 20.0),),
        attention_latency=(AttentionPoint(8, 1024, 32, 8, 128, 132, 15.0),),
        corun_slowdown=1.7, corun_samples=(CorunSample(64, 68, 800.0, 520.0, 1360.0),),
        coresident_samples=(CoresidentSample("llama-3-8b", 256, 512, 65536, 300.0, 400.0, 520.0,
                                             280.0, 330.0),))


def test_json_round_trip_keeps_every_field():
    profile = _measured()
    again = DeviceProfile.from_json(profile.to_json())
    assert again == profile
    assert json.loads(profile.to_json())["version"] == PROFILE_VERSION


def test_corun_sample_slowdown_is_together_over_slowest_alone():
    assert CorunSample(64, 68, 800.0, 520.0, 1360.0).slowdown == pytest.approx(1.7)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(version=99), "'version'"),
    (lambda d: d.pop("sm_count"), "'sm_count'"),
    (lambda d: d.update(colour="red"), "'colour'"),
    (lambda d: d["gemm_latency"][0].pop("latency_us"), "gemm_latency"),
    (lambda d: d.update(bandwidth_by_sms=[[16]]), "bandwidth_by_sms"),
    (lambda d: d.update(corun_slowdown=0.5), "corun_slowdown"),
    (lambda d: d["coresident_samples"][0].update(together_us=-1.0), r"coresident_samples.*\[0\]"),
    (lambda d: d["coresident_samples"][0].pop("tokens"), "coresident_samples"),
    (lambda d: d.update(version=1), "not in version 1"),
])
def test_bad_profiles_name_the_field(mutate, field):
    data = _measured().to_dict()
    mutate(data)
    with pytest.raises(ProfileError, match=field):
        DeviceProfile.from_dict(data)


def test_not_json_is_a_profile_error():
    with pytest.raises(ProfileError, match="not valid JSON"):
        DeviceProfile.from_json("{nope")


def test_partition_sizes_follow_granularity():
    hopper = BUILTIN["h100"]
    assert hopper.partition_sizes()[:3] == (8, 16, 24)
    assert hopper.partition_sizes()[-1] == 120 and all(s % 8 == 0 for s in hopper.partition_sizes())
    ampere = BUILTIN["a100"]
    assert ampere.partition_sizes()[:2] == (4, 6) and ampere.partition_sizes()[-1] == 104


def test_validation_rejects_unsorted_bandwidth_table():
    with pytest.raises(ValueError, match="bandwidth_by_sms"):
        DeviceProfile("x", 10, 2, 4, 1e12, 1e11, 2 ** 30, bandwidth_by_sms=((8, 1.0), (4, 2.0)))


def test_coresident_sample_penalty_and_speedup_by_hand():
    sample = CoresidentSample("llama-3-8b", 256, 512, 65536, 300.0, 400.0, 520.0, 280.0,
                              330.0)
    assert sample.overlap_penalty == pytest.approx((520 - 400) / 300)
    assert sample.speedup == pytest.approx(610 / 520)
    worst = CoresidentSample("llama-3-8b", 256, 512, 65536, 300.0, 400.0, 900.0, 1.0, 1.0)
    assert worst.overlap_penalty == 1.0


def test_a_version_1_profile_loads_without_coresident_samples():
    data = _measured().to_dict()
    data.pop("coresident_samples")
    data["version"] = 1
    old = DeviceProfile.from_dict(data)
    assert old.coresident_samples == () and old.corun_samples == _measured().corun_samples
