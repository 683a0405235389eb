"""Finding a device profile: by name or file (measured JSON shipped in data/, else analytic), and
for a CUDA GPU by its device name.

Owns the lookup order, the one mapping from CUDA device names to profile names (`gpu_key`,
`profile_name_for_gpu`) and the errors listing what exists. `local_profile` is the profile of
the GPU this process runs on, what the runtime plans for by default. Knows nothing of how
profiles are measured or used.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from pipedecode.errors import ProfileError
from pipedecode.profiles.analytic import ALIASES, BUILTIN
from pipedecode.profiles.schema import DeviceProfile


def _data_dir() -> Path:
    return Path(str(resources.files("pipedecode.profiles") / "data"))


def _measured_names() -> list[str]:
    folder = _data_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def list_profiles() -> list[str]:
    """Names `load_profile` accepts (aliases aside): built-in analytic and shipped measured."""
    return sorted(set(BUILTIN) | set(_measured_names()))


def load_profile_file(path: str | os.PathLike) -> DeviceProfile:
    """A validated profile from a JSON file; ProfileError names the bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"cannot read profile {str(path)!r}: {exc.strerror or exc}") from None
    return DeviceProfile.from_json(text, where=str(path))


def load_profile(name_or_path: str | os.PathLike | DeviceProfile) -> DeviceProfile:
    """A profile by name ("h100", "nvidia-h200", ...) or JSON path.

    A measured `data/<name>.json` shipped with pipedecode wins over the analytic profile of the
    same name. Unknown names raise ProfileError listing the known ones.
    """
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text or os.path.exists(text):
        if not os.path.exists(text):
            raise ProfileError(f"profile file {text!r} does not exist; pass a JSON file or one of "
                               f"{', '.join(list_profiles())}")
        return load_profile_file(text)
    name = ALIASES.get(text.lower(), text.lower())
    shipped = _data_dir() / f"{name}.json"
    if shipped.is_file():
        return load_profile_file(shipped)
    if name in BUILTIN:
        return BUILTIN[name]
    raise ProfileError(f"unknown device profile {text!r}; known: {', '.join(list_profiles())} "
                       f"(or a path to a profile JSON)")


# Lower-cased substrings of CUDA device names, most specific first, and the key each gives.
_GPU_KEYS = (("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("rtx 4090", "rtx4090"),
             ("l40s", "l40s"), ("b200", "b200"))


def gpu_key(gpu_name: str) -> str:
    """The short name of a CUDA device ("NVIDIA H100 80GB HBM3" -> "h100"): profile names,
    measured profiles and result files use it. Unknown GPUs get their name's letters and
    digits ("NVIDIA L4" -> "l4")."""
    low = gpu_name.lower()
    for part, key in _GPU_KEYS:
        if part in low:
            return key
    return "".join(ch for ch in low.replace("nvidia", "") if ch.isalnum()) or "gpu"


def profile_name_for_gpu(gpu_name: str) -> str | None:
    """The profile `load_profile` has for a CUDA device name ("NVIDIA H200" -> "h200"), or None."""
    key = gpu_key(gpu_name)
    name = ALIASES.get(key, key)
    return name if name in list_profiles() else None


def profile_for_gpu(gpu_name: str, sm_count: int | None = None,
                    memory_bytes: int | None = None) -> DeviceProfile:
    """The profile of a CUDA device by its name: measured where shipped (h100, h200), else the
    analytic one of that name. ProfileError, in one line, for a GPU no profile describes, or
    whose SM count or memory (within 10%) differs from its profile's: an H100 PCIe is not the
    132-SM H100 SXM, an A100 40GB not the 80GB one."""
    key = gpu_key(gpu_name)
    name = profile_name_for_gpu(gpu_name)
    how = (f"measure one on it with `pipedecode profile --out {key}.json` and pass "
           f"device='{key}.json'")
    if name is None:
        raise ProfileError(f"no device profile describes the GPU {gpu_name!r}; {how} (built-in: "
                           f"{', '.join(list_profiles())})")
    profile = load_profile(name)
    if sm_count is not None and sm_count != profile.sm_count:
        raise ProfileError(f"the {name!r} profile describes {profile.sm_count} SMs but the GPU "
                           f"{gpu_name!r} has {sm_count}; {how}")
    if memory_bytes is not None and abs(memory_bytes - profile.memory_bytes) > \
            0.1 * profile.memory_bytes:
        raise ProfileError(f"the {name!r} profile describes {profile.memory_bytes / 2 ** 30:.0f} "
                           f"GiB but the GPU {gpu_name!r} has {memory_bytes / 2 ** 30:.0f} GiB; "
                           f"{how}")
    return profile


@functools.lru_cache(maxsize=16)
def local_profile(device_index: int | None = None) -> DeviceProfile:
    """The profile of the CUDA GPU this process runs on (`profile_for_gpu`; device_index None:
    the current device). Without a CUDA device, the h100 profile: cost annotations and planning
    on a CPU then describe the GPU pipedecode is tuned on. Cached per device."""
    import torch

    if not torch.cuda.is_available():
        return load_profile("h100")
    index = torch.cuda.current_device() if device_index is None else device_index
    props = torch.cuda.get_device_properties(index)
    return profile_for_gpu(props.name, props.multi_processor_count, props.total_memory)


def resolve_profile(device: str | os.PathLike | DeviceProfile | None) -> DeviceProfile:
    """A profile from a DeviceProfile, a name or JSON path (`load_profile`), or None: the profile
    of the GPU this runs on (`local_profile`; h100 without a GPU)."""
    return local_profile() if device is None else load_profile(device)
