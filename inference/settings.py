"""Configuration sections owned by the inference side (models, faces, inversion, worker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class Section(BaseModel):
    """Base for every config section: unknown keys are typos, so they are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsSettings(Section):
    dir: Path = Path("models")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    runtime: Literal["torch", "openvino"] = "torch"
    face: str = "ffhq"
    perceptual: str = "vgg16.pt"


class StyleSettings(Section):
    label: str = ""
    # blend: `model` is a StyleGAN2 fine-tuned from FFHQ, blended with models.face per strength.
    # psp: `model` is a pSp checkpoint (e.g. psp_ffhq_toonify) whose encoder maps the face
    # straight into its embedded toon generator; it has one rendering, strengths do not apply.
    kind: Literal["blend", "psp"] = "blend"
    model: str
    strengths: list[PositiveInt] = Field(default_factory=lambda: [8, 16, 32, 64])
    default_strength: PositiveInt = 32
    blend_width: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_strengths(self) -> StyleSettings:
        blending = {"strengths", "default_strength", "blend_width"} & self.model_fields_set
        if self.kind == "psp" and blending:
            raise ValueError(f"{', '.join(sorted(blending))}: not for a psp style (one rendering)")
        for r in self.strengths:
            if r < 4 or r & (r - 1):
                raise ValueError(f"strength {r} is not a power of two >= 4")
        if self.default_strength not in self.strengths:
            raise ValueError(f"default_strength {self.default_strength} is not in strengths")
        return self


class FacesSettings(Section):
    backend: Literal["auto", "face-alignment", "dlib"] = "auto"
    max_faces: PositiveInt = 4
    min_size: PositiveInt = 64


class LimitsSettings(Section):
    max_bytes: PositiveInt = 20_000_000
    max_pixels: PositiveInt = 40_000_000
    prepare_timeout: float = Field(10.0, gt=0)


class InvertSettings(Section):
    # auto: on a GPU optimize (encoder+optimize when the encoder file is there); on a CPU,
    # where one optimisation step takes seconds, encoder when its file is there, else optimize.
    method: Literal["auto", "optimize", "encoder", "encoder+optimize"] = "auto"
    steps: PositiveInt = 300
    encoder: str = "e4e"
    refine_steps: PositiveInt = 100
    loss: Literal["perceptual", "pixel"] = "perceptual"


def _prepare_processes() -> int:
    return min(os.cpu_count() or 1, 4)


class WorkerSettings(Section):
    prepare_processes: PositiveInt = Field(default_factory=_prepare_processes)
    queue_size: PositiveInt = 32
    max_batch: PositiveInt = 1
    job_timeout: float = Field(300.0, gt=0)
    cache_size: PositiveInt = 256
    cache_ttl: float = Field(3600.0, gt=0)
    progress_interval: float = Field(3.0, gt=0)


class BrokerSettings(Section):
    # Empty: the embedded worker. redis://host:6379/0: `toonify run` queues jobs on a Redis
    # Stream and `toonify worker` processes (any number, on any machine) run them.
    url: str = Field("", pattern=r"^(|rediss?://.+)$")
    # Seconds a job may sit with a worker that stopped answering before another worker takes
    # it; running workers renew their claims well within it.
    claim_after: float = Field(60.0, gt=0)
