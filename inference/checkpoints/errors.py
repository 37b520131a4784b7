"""The one error every checkpoint reader raises."""

from __future__ import annotations


class CheckpointError(Exception):
    """A file that cannot be read as a StyleGAN2 generator; str() says why, for a person."""
