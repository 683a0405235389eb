"""What several commands share: output files that appear only when the command succeeds, and
the words that say where a device profile's numbers come from.

Knows nothing of what the files hold or of how predictions are made.
"""

from __future__ import annotations

import os
import tempfile

from pipedecode.errors import PipedecodeError, ProfileError

MEASURED = "measured profile"
ANALYTIC = "analytic profile, never measured"


class Outputs:
    """Files a command writes, each first to a temp file beside its target.

    `path(target)` makes the temp file at once, so an unwritable target fails before the work
    starts; `commit()` renames every temp file onto its target when the command has succeeded.
    Leaving the `with` block without a commit removes them: a failed command leaves nothing
    half-written and keeps any earlier file at the target."""

    def __init__(self) -> None:
        self._staged: list[tuple[str, str]] = []       # (temp path, target)

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def path(self, target: str) -> str:
        """A temp file to write `target`'s content to (renamed onto it by `commit`)."""
        if os.path.isdir(target):
            raise PipedecodeError(f"cannot write {target!r}: it is a directory")
        folder = os.path.dirname(os.path.abspath(target))
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part",
                                        dir=folder)
        except OSError as exc:
            raise PipedecodeError(f"cannot write {target!r}: {exc.strerror or exc}") from None
        os.close(fd)
        os.chmod(temp, _mode_for(target))      # mkstemp's 0600 would outlive the rename
        self._staged.append((temp, target))
        return temp

    def write_text(self, target: str, text: str) -> None:
        with open(self.path(target), "w") as f:
            f.write(text)

    def commit(self) -> None:
        for temp, target in self._staged:
            os.replace(temp, target)
        self._staged = []

    def discard(self) -> None:
        for temp, _ in self._staged:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        self._staged = []


def _mode_for(target: str) -> int:
    """The mode an existing target has, else what `open` would give a new file here."""
    try:
        return os.stat(target).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def provenance(profile) -> str:
    """'measured profile' or 'analytic profile, never measured', for a DeviceProfile."""
    return MEASURED if profile.source == "measured" else ANALYTIC


def provenance_of(device_name: str) -> str:
    """The same for a profile known only by the name a schedule records."""
    from pipedecode.profiles import load_profile

    try:
        return provenance(load_profile(device_name))
    except ProfileError:
        return f"profile {device_name!r} is not shipped with pipedecode: measured or not unknown"


def speedup_words(speedup: float, source: str) -> str:
    """'predicted 1.38x faster than sequential (analytic profile, never measured)'."""
    if speedup <= 1.0:
        return f"predicted no faster than sequential ({source})"
    return f"predicted {speedup:.2f}x faster than sequential ({source})"
