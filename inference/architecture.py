"""The numbers a StyleGAN2 generator's shapes depend on, checked, and how a checkpoint's channel
counts map back to them; stored in the canonical file's metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """What a StyleGAN2 generator's shapes depend on; stored in the canonical file's metadata.

    Channels at resolution r: min(channel_base * channel_multiplier // r, channel_max), which is
    rosinality's table (512 up to 32 px, then 256*cm, 128*cm, ...) and NVlabs' channel_base/r.
    """

    resolution: int
    channel_multiplier: int = 2
    w_dim: int = 512
    n_mlp: int = 8
    lr_mlp: float = 0.01
    channel_max: int = 512
    channel_base: int = 16384

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"resolution {r} is not a power of two >= 4")
        for name in ("channel_multiplier", "w_dim", "n_mlp", "channel_max", "channel_base"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.lr_mlp <= 0:
            raise ValueError("lr_mlp must be positive")
        if self.channels(r) < 1:
            raise ValueError(f"no channels left at {r} px: raise channel_base")

    @property
    def log2_resolution(self) -> int:
        return self.resolution.bit_length() - 1

    @property
    def num_ws(self) -> int:
        return 2 * self.log2_resolution - 2

    @property
    def num_noises(self) -> int:
        return 2 * self.log2_resolution - 3

    def channels(self, res: int) -> int:
        return min(self.channel_base * self.channel_multiplier // res, self.channel_max)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(**data)

    @classmethod
    def from_channel_table(
        cls, channels: dict[int, int], *, w_dim: int, n_mlp: int, lr_mlp: float
    ) -> Architecture:
        """The architecture whose channel formula reproduces a checkpoint's channel counts."""
        resolution = max(channels)
        channel_max = max(channels.values())
        below = [res * ch for res, ch in channels.items() if ch < channel_max]
        total = below[0] if below else channel_max * resolution
        cm, base = (total // 16384, 16384) if total % 16384 == 0 else (1, total)
        arch = cls(resolution, cm, w_dim, n_mlp, lr_mlp, channel_max, base)
        if any(arch.channels(res) != ch for res, ch in channels.items()):
            raise ValueError(f"channel counts {channels} follow no min(base/r, max) rule")
        return arch
