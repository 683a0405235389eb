"""Device profiles: schema, analytic profiles for unmeasured GPUs, shipped measured JSON."""

from pipedecode.profiles.latency import (attention_latency_us, bandwidth_bytes_per_s,
                                         corun_slowdown, gemm_latency_us)
from pipedecode.profiles.registry import (gpu_key, list_profiles, load_profile, load_profile_file,
                                          local_profile, profile_for_gpu, profile_name_for_gpu,
                                          resolve_profile)
from pipedecode.profiles.schema import (PROFILE_VERSION, AttentionPoint, CoresidentSample,
                                        CorunSample, DeviceProfile, GemmPoint)

__all__ = ["PROFILE_VERSION", "AttentionPoint", "CoresidentSample", "CorunSample",
           "DeviceProfile", "GemmPoint",
           "attention_latency_us", "bandwidth_bytes_per_s", "corun_slowdown", "gemm_latency_us",
           "gpu_key", "list_profiles", "load_profile", "load_profile_file", "local_profile",
           "profile_for_gpu", "profile_name_for_gpu", "resolve_profile"]
