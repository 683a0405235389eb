"""Device profiles: schema, analytic profiles for unmeasured GPUs, shipped measured JSON."""

from pipedecode.profiles.schema import PROFILE_VERSION, DeviceProfile

__all__ = ["PROFILE_VERSION", "DeviceProfile"]
