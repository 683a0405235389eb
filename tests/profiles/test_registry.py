import pytest

from pipedecode.errors import ProfileError
from pipedecode.profiles import DeviceProfile, list_profiles, load_profile, registry


def test_builtin_names_and_aliases():
    assert {"h100", "h200", "a100", "rtx4090"} <= set(list_profiles())
    assert load_profile("nvidia-h100-x1") == load_profile("h100")
    assert load_profile("NVIDIA-H200").name == "h200"


def test_hopper_profiles_are_seeded_with_measurements():
    from pipedecode.profiles.analytic import BUILTIN

    h100, h200 = BUILTIN["h100"], BUILTIN["h200"]
    assert h100.peak_flops_per_s == pytest.approx(798e12)
    assert h100.hbm_bytes_per_s == pytest.approx(3.08e12)
    assert h200.hbm_bytes_per_s == pytest.approx(4.39e12)
    assert dict(h100.bandwidth_by_sms)[64] == pytest.approx(2.87e12)
    assert (h100.min_partition_sms, h100.sm_granularity) == (8, 8)
    assert (BUILTIN["rtx4090"].min_partition_sms, BUILTIN["rtx4090"].sm_granularity) == (4, 2)


def test_unknown_name_lists_known_profiles():
    with pytest.raises(ProfileError, match="h100.*h200"):
        load_profile("h900")


def test_profile_file_and_missing_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(load_profile("a100").to_json())
    assert load_profile(str(path)) == load_profile("a100")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "other.json"))
    path.write_text('{"version": 0}')
    with pytest.raises(ProfileError, match="'version'"):
        load_profile(str(path))


def test_shipped_measured_json_overrides_analytic(tmp_path, monkeypatch):
    from pipedecode.profiles.analytic import BUILTIN

    measured = DeviceProfile(**{**BUILTIN["h100"].__dict__, "source": "measured",
                                "corun_slowdown": 1.6})
    (tmp_path / "h100.json").write_text(measured.to_json())
    monkeypatch.setattr(registry, "_data_dir", lambda: tmp_path)
    got = load_profile("nvidia-h100-x1")
    assert got.source == "measured" and got.corun_slowdown == 1.6
    assert load_profile("a100").source == "analytic"


@pytest.mark.parametrize("gpu,key,profile", [
    ("NVIDIA H100 80GB HBM3", "h100", "h100"), ("NVIDIA H200", "h200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090", "rtx4090"),
    ("NVIDIA L4", "l4", None), ("NVIDIA L40S", "l40s", None)])
def test_gpu_names_map_to_one_key_and_profile(gpu, key, profile):
    assert registry.gpu_key(gpu) == key
    assert registry.profile_name_for_gpu(gpu) == profile


def test_profile_for_gpu_checks_the_device_and_says_how_to_measure():
    h200 = registry.profile_for_gpu("NVIDIA H200", 132, 150_000_000_000)
    assert h200 == load_profile("h200")
    for args in (("NVIDIA L4",), ("NVIDIA H100 PCIe", 114), ("NVIDIA A100-SXM4-40GB", 108,
                                                             40 * 2 ** 30)):
        with pytest.raises(ProfileError, match="pipedecode profile") as err:
            registry.profile_for_gpu(*args)
        assert args[0] in str(err.value) and "\n" not in str(err.value)


def test_local_profile_is_the_gpu_it_runs_on(monkeypatch):
    import types

    import torch

    props = types.SimpleNamespace(name="NVIDIA H200", multi_processor_count=132,
                                  total_memory=150_000_000_000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    registry.local_profile.cache_clear()
    try:
        assert registry.local_profile().name == "h200"
        assert registry.resolve_profile(None).name == "h200"
        assert registry.resolve_profile("a100").name == "a100"
        props.name = "NVIDIA L4"
        with pytest.raises(ProfileError, match="L4"):
            registry.local_profile(1)
    finally:
        registry.local_profile.cache_clear()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU default")
def test_without_a_gpu_the_local_profile_is_h100():
    assert registry.local_profile() == load_profile("h100")
