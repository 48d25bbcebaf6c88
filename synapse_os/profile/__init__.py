"""The profile: model, loader (with source positions and `extends:`), hardware detection."""

from synapse_os.profile.loader import load_profile
from synapse_os.profile.model import Profile

__all__ = ["Profile", "load_profile"]
