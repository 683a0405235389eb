"""Finding a device profile by name or file: measured JSON shipped in data/, else analytic.

Owns the lookup order and the error listing what exists. Knows nothing of how profiles are
measured or used.
"""

from __future__ import annotations

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
