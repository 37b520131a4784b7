"""Toonifier: photo bytes -> toon faces pasted back, the way the toonify notebook does it.

Decode, detect and align the faces (FFHQ framing), find each face's W+ code in the FFHQ
generator, render that code with a blended model (toon structure, FFHQ texture) and paste the
result back. Synchronous and single-threaded by design: the worker calls it from one thread.
Typed values travel between the steps: `Prepared` (prepare.py) -> `Latents` -> `Finished`,
which holds everything a re-render (another style or strength) needs.

`models.dtype` float16/bfloat16 only changes rendering, and only its top four resolutions (see
inference/stylegan2.py); inversion always runs in float32. A render that comes out non-finite
is done again in float32, and codes or images that are still not finite fail the job with
NonFinite instead of turning into black or white pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from inference.align import paste_back
from inference.blend import blend
from inference.devices import resolve_device
from inference.encoder_checkpoints import load_encoder, load_psp_style
from inference.encoders import EncoderFormatError, FaceEncoder
from inference.errors import InferenceError
from inference.faces import FaceDetector, SkippedFace, make_detector
from inference.invert import (
    Distance,
    invert,
    load_perceptual,
    perceptual_distance,
    pixel_distance,
    w_stats,
    warm_up_optimiser,
)
from inference.invert_plan import method_steps, resolve_method
from inference.model_store import ModelStore
from inference.prepare import Prepared, prepare_photo, timed
from inference.settings import (
    FacesSettings,
    InvertSettings,
    LimitsSettings,
    ModelsSettings,
    StyleSettings,
)
from inference.stages import ProgressFn, Stage, StopFn
from inference.stylegan2 import Generator

log = logging.getLogger(__name__)


class NonFinite(InferenceError):
    """The models gave NaN or infinity for a face: its codes, or its image even in float32."""


class BadChoice(InferenceError):
    """A style this Toonifier does not render, or a strength its style does not have."""

    def __init__(self, style: str, strength: int | None = None) -> None:
        asked = f"style {style!r}" if strength is None else f"style {style!r}, strength {strength}"
        super().__init__(asked)
        self.style = style
        self.strength = strength
        """None: the style itself is unknown."""


class ToonifierConfig(Protocol):
    """The sections of bots.config.Settings the Toonifier reads."""

    @property
    def models(self) -> ModelsSettings: ...
    @property
    def styles(self) -> Mapping[str, StyleSettings]: ...
    @property
    def style(self) -> str: ...
    @property
    def faces(self) -> FacesSettings: ...
    @property
    def limits(self) -> LimitsSettings: ...
    @property
    def invert(self) -> InvertSettings: ...


@dataclass(frozen=True)
class StyleInfo:
    name: str
    label: str
    strengths: list[int]
    default_strength: int


@dataclass
class Latents:
    """What the latent cache keeps for re-rendering: W+ codes of the faces of one photo."""

    ws: torch.Tensor  # [n_faces, num_ws, w_dim], CPU float32
    noises: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class Finished:
    """A rendered job, and everything a re-render of it needs (what the worker caches)."""

    source: Prepared  # the photo, its aligned faces and the faces left out
    latents: Latents
    style: str
    strength: int
    photo: Image.Image  # the toon faces pasted back into the photo
    faces: list[Image.Image]  # the toon faces, aligned
    timings: dict[str, float]  # seconds per stage, preparation included

    @property
    def skipped(self) -> list[SkippedFace]:
        return self.source.skipped


def to_tensor(images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    """RGB images -> [N, 3, H, W] float32 in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device) / 127.5 - 1


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in [-1, 1] -> RGB images (rounded, clipped)."""
    pixels = ((batch.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(a, "RGB") for a in pixels.permute(0, 2, 3, 1).cpu().numpy()]


def prepare_blends(
    structure: Generator,
    texture: Generator,
    strengths: Sequence[int],
    blend_width: float | None,
) -> dict[int, Generator]:
    """One blended generator per strength (swap resolution), ready to render.

    They stay float32 whatever `models.dtype`: hard blends then share the two models' tensors
    instead of holding a converted copy each; reduced precision is cast layer by layer.
    """
    return {
        strength: blend(structure, texture, strength, blend_width).eval().requires_grad_(False)
        for strength in strengths
    }


class Toonifier:
    """Every model loaded once; prepare/invert/finish/rerender run on the caller's thread."""

    def __init__(
        self,
        face: Generator,
        blends: Mapping[str, Mapping[int, Generator]],
        styles: Mapping[str, StyleInfo],
        default_style: str,
        detector: FaceDetector,
        limits: LimitsSettings,
        steps: int,
        make_distance: Callable[[torch.Tensor], Distance],
        encoder: FaceEncoder | None = None,
        style_encoders: Mapping[str, FaceEncoder] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`encoder` set: its answer is the codes (steps 0) or where `steps` of optimisation
        start; else they start at w_avg. `style_encoders` map the faces straight into the one
        model of `blends[style]` (pSp's toonify), without the FFHQ codes. `dtype`: the
        precision of the top resolutions of a render."""
        self.face = face.eval().requires_grad_(False)
        self.blends = blends
        self.styles = styles
        self.default_style = default_style
        self.detector = detector
        self.limits = limits
        self.steps = steps
        self.make_distance = make_distance
        self.encoder = encoder
        self.style_encoders = dict(style_encoders or {})
        self.dtype = dtype
        self.device = next(face.parameters()).device
        # No cuDNN autotuning, stated here because face-alignment turns it on for the whole
        # process: it would tune again for every new batch size (and photo size in detection)
        # on the shared GPU, and its timed choice of algorithms would make a face's pixels
        # depend on the batch it ran in. Whether tuning would pay off is not yet measured.
        torch.backends.cudnn.benchmark = False
        w_stats(face)  # computed now rather than during the first request
        warm_up_optimiser()

    @classmethod
    def from_config(cls, config: ToonifierConfig) -> Toonifier:
        """Load the FFHQ generator and every style, and blend every strength, once."""
        device = resolve_device(config.models.device)
        store = ModelStore(config.models.dir)
        # "auto" uses the encoder when its file is there (see inference/invert_plan.py).
        has_encoder = config.invert.method == "auto" and store.path(config.invert.encoder).is_file()
        method = resolve_method(config.invert, device, has_encoder)
        steps = method_steps(method, config.invert)
        # Before any generator loads, so a missing vgg16.pt fails fast; the encoder alone
        # never measures a distance, so it needs no perceptual network.
        make_distance = (
            distance_factory(config.invert, config.models, device) if steps else pixel_distance
        )
        dtype = getattr(torch, config.models.dtype)
        face = store.load(config.models.face, device)
        encoder = None
        if method != "optimize":
            encoder = load_encoder(store.path(config.invert.encoder), device)
            _check_fits(encoder, face, f"invert.encoder {config.invert.encoder!r}")
        blends: dict[str, dict[int, Generator]] = {}
        styles: dict[str, StyleInfo] = {}
        style_encoders: dict[str, FaceEncoder] = {}
        for name, style in config.styles.items():
            if style.kind == "psp":
                psp, decoder = load_psp_style(store.path(style.model), device)
                _check_fits(psp, decoder, f"styles.{name}.model {style.model!r}")
                style_encoders[name] = psp
                full = decoder.resolution
                blends[name] = {full: decoder.eval().requires_grad_(False)}
                styles[name] = StyleInfo(name, style.label or name, [full], full)
                continue
            structure = store.load(style.model, device)
            blends[name] = prepare_blends(structure, face, style.strengths, style.blend_width)
            styles[name] = StyleInfo(
                name, style.label or name, list(style.strengths), style.default_strength
            )
        return cls(
            face=face,
            blends=blends,
            styles=styles,
            default_style=config.style,
            detector=make_detector(config.faces, str(device)),
            limits=config.limits,
            steps=steps,
            make_distance=make_distance,
            encoder=encoder,
            style_encoders=style_encoders,
            dtype=dtype,
        )

    @property
    def resolution(self) -> int:
        return int(self.face.resolution)

    def prepare(self, image: bytes) -> Prepared:
        """Decode, detect and align (inference/prepare.py) with this Toonifier's detector."""
        return prepare_photo(image, self.detector, self.limits, self.resolution)

    def invert(
        self,
        batch: Sequence[Prepared],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[Latents]:
        """All faces of all jobs in one optimisation; each face as if it were alone.

        A face's seed is its index in its photo, so on a CPU a job's result does not depend on
        the batch it landed in; on CUDA only up to the arithmetic (see inference/invert.py).
        Adds the shared "invert" seconds to each job's timings.
        """
        start = time.perf_counter()
        faces = [face for prepared in batch for face in prepared.faces]
        seeds = [i for prepared in batch for i in range(len(prepared.faces))]
        targets = to_tensor([face.image for face in faces], self.device)
        encoded = None
        if self.encoder is not None:
            with torch.no_grad():
                encoded = self.encoder(targets)
        if encoded is not None and self.steps == 0:
            found_ws = encoded.float().cpu()
            if progress is not None:
                progress(Stage.INVERT, 1, 1)
        else:
            found_ws = invert(
                self.face,
                self.make_distance(targets),
                steps=self.steps,
                seeds=seeds,
                start=encoded,
                progress=progress,
                should_stop=should_stop,
            ).ws
        elapsed = time.perf_counter() - start
        latents = []
        for prepared, ws in zip(batch, found_ws.split([len(p.faces) for p in batch]), strict=True):
            prepared.timings["invert"] = elapsed
            latents.append(Latents(ws=ws.clone()))
        return latents

    def finish(
        self,
        prepared: Prepared,
        latents: Latents,
        style: str | None = None,
        strength: int | None = None,
    ) -> Finished:
        """Render the codes with the blended model (one generator pass) and paste the toon
        faces back. A pSp style encodes the aligned faces into its own model instead (one more
        pass). Raises NonFinite rather than render NaN or infinity as black or white pixels."""
        style, strength = self.pick(style, strength)
        model = self.blends[style][strength]
        faces = prepared.faces
        timings = dict(prepared.timings)
        with timed(timings, "render"), torch.no_grad():
            ws = latents.ws
            if style in self.style_encoders:
                ws = self.style_encoders[style](to_tensor([f.image for f in faces], self.device))
            toons = to_images(self._synthesise(model, ws.to(self.device), f"{style}/{strength}"))
        with timed(timings, "paste"):
            pasted = paste_back(
                prepared.photo, [(toon, face.quad) for toon, face in zip(toons, faces, strict=True)]
            )
        return Finished(prepared, latents, style, strength, pasted, toons, timings)

    def rerender(self, finished: Finished, style: str, strength: int) -> Finished:
        """The same faces in another style or strength from their cached codes."""
        if (style, strength) == (finished.style, finished.strength):
            return finished
        return self.finish(finished.source, finished.latents, style, strength)

    def _synthesise(self, model: Generator, ws: torch.Tensor, what: str) -> torch.Tensor:
        """Images of finite codes, in self.dtype, or again in float32 if that overflowed."""
        if not bool(ws.isfinite().all()):
            log.warning("non-finite latent codes for %s: the job fails", what)
            raise NonFinite("the face's latent codes are not finite")
        images = model.synthesis(ws, noise_mode="const", dtype=self.dtype)
        if self.dtype != torch.float32 and not bool(images.isfinite().all()):
            log.warning("%s rendered non-finite in %s; rendering in float32", what, self.dtype)
            images = model.synthesis(ws, noise_mode="const")
        if not bool(images.isfinite().all()):
            log.warning("%s rendered non-finite in float32: the job fails", what)
            raise NonFinite("the rendered face is not finite")
        return images

    def toonify(
        self,
        image: bytes,
        style: str | None = None,
        strength: int | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Finished:
        """prepare + invert + finish in one call, reporting each stage to `progress`."""
        self.pick(style, strength)
        if progress is not None:
            progress(Stage.DETECT, 0, 1)
        prepared = self.prepare(image)
        if progress is not None:
            progress(Stage.DETECT, 1, 1)
        (latents,) = self.invert([prepared], progress, should_stop)
        if progress is not None:
            progress(Stage.RENDER, 0, 1)
        finished = self.finish(prepared, latents, style, strength)
        if progress is not None:
            progress(Stage.RENDER, 1, 1)
        return finished

    def pick(self, style: str | None, strength: int | None) -> tuple[str, int]:
        """The style and strength to use: the defaults for None, BadChoice for unknown ones."""
        name = style or self.default_style
        info = self.styles.get(name)
        if info is None:
            raise BadChoice(name)
        chosen = info.default_strength if strength is None else strength
        if chosen not in info.strengths:
            raise BadChoice(name, chosen)
        return name, chosen


def _check_fits(encoder: FaceEncoder, generator: Generator, what: str) -> None:
    """An encoder's codes only mean something to the generator it was trained with."""
    if (encoder.num_ws, encoder.w_dim) != (generator.num_ws, generator.w_dim):
        raise EncoderFormatError(
            f"{what} gives {encoder.num_ws} codes of {encoder.w_dim}, but the generator takes "
            f"{generator.num_ws} of {generator.w_dim}"
        )


def distance_factory(
    settings: InvertSettings, models: ModelsSettings, device: torch.device
) -> Callable[[torch.Tensor], Distance]:
    """The configured loss, bound to targets per batch; loads vgg16.pt once for "perceptual"."""
    if settings.loss == "pixel":
        return pixel_distance
    vgg = load_perceptual(models.dir / models.perceptual, device)
    return lambda targets: perceptual_distance(vgg, targets)
