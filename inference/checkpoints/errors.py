"""The one error every checkpoint reader raises."""

from __future__ import annotations

from inference.errors import ModelLoadError


class CheckpointError(ModelLoadError):
    """A file that cannot be read as a StyleGAN2 generator; str() says why, for a person."""
