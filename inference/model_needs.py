"""What a configuration needs on disk, whether each file is there, and how to get what is not.

The doctor behind `toonify models doctor` and scripts/run. It follows the rules of
`Toonifier.from_config` (which inversion runs here, so whether the perceptual network and the
encoder are needed) and knows where each public file is published: a direct link, which can be
fetched unattended, or a page that needs a browser, after which the downloaded file is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import torch

from inference.checkpoints import CheckpointError, read_model_info
from inference.encoder_checkpoints import read_encoder_info
from inference.invert import VGG16_URL
from inference.invert_plan import Method, method_steps, resolve_method
from inference.model_store import (
    ModelStore,
    Progress,
    download,
    fetch_perceptual,
)
from inference.settings import FacesSettings, InvertSettings, ModelsSettings, StyleSettings

FFHQ_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-ffhq-config-f.pkl"
TOON_PAGE = "https://mega.nz/folder/OtllzJwa#C947mCCdEfMCRTWnDcs4qw"
TOON_FILE = "ffhq-cartoon-blended-64.pkl"
E4E_PAGE = "https://github.com/omertov/encoder4editing (README, Pretrained Models)"
E4E_FILE = "e4e_ffhq_encode.pt"
PSP_PAGE = "https://github.com/eladrich/pixel2style2pixel (README, Pretrained Models)"
PSP_FILE = "psp_ffhq_toonify.pt"
DOWNLOADS = "~/Downloads"


class Kind(StrEnum):
    """How a file is checked and, with a direct link, fetched."""

    GENERATOR = "generator"  # a canonical .safetensors StyleGAN2, imported from any format
    ENCODER = "encoder"  # a canonical pSp/e4e encoder (a psp style's, with its decoder)
    PERCEPTUAL = "perceptual"  # NVIDIA's TorchScript VGG16, used as downloaded
    WEIGHTS = "weights"  # face-alignment's files in the torch hub cache


@dataclass(frozen=True)
class Need:
    """One file the configuration uses; `fix` is empty when it is there and readable."""

    what: str  # its role, naming the config key that asks for it
    path: Path
    kind: Kind
    required: bool  # False: used when present (faster or better), not needed to start
    problem: str | None  # None: there and readable
    fix: tuple[str, ...] = ()  # one instruction per line
    url: str | None = None  # a direct link: `--fetch` and scripts/run get it unattended
    name: str | None = None  # the model name an import writes

    @property
    def missing(self) -> bool:
        return self.required and self.problem is not None

    @property
    def fetchable(self) -> bool:
        return self.missing and self.url is not None


@dataclass(frozen=True)
class Diagnosis:
    device: torch.device
    method: Method
    needs: list[Need]

    @property
    def missing(self) -> list[Need]:
        return [need for need in self.needs if need.missing]


class DoctorConfig(Protocol):
    """The sections of bots.config.Settings the doctor reads (those of the Toonifier)."""

    @property
    def models(self) -> ModelsSettings: ...
    @property
    def styles(self) -> dict[str, StyleSettings]: ...
    @property
    def style(self) -> str: ...
    @property
    def faces(self) -> FacesSettings: ...
    @property
    def invert(self) -> InvertSettings: ...


def diagnose(config: DoctorConfig, device: torch.device) -> Diagnosis:
    """Every file this configuration loads on `device`, in the order the bot loads them."""
    store = ModelStore(config.models.dir)
    invert = config.invert
    encoder_path = store.path(invert.encoder)
    method = resolve_method(invert, device, encoder_path.is_file())
    steps = method_steps(method, invert)
    needs = [_face(store, config.models.face)]
    if invert.method == "auto" or method != "optimize":
        needs.append(_encoder(encoder_path, invert, method, device))
    if steps and invert.loss == "perceptual":
        needs.append(_perceptual(config.models.dir / config.models.perceptual))
    for name, style in config.styles.items():
        needs.append(_style(store, name, style, default=name == config.style))
    if config.faces.backend != "dlib":
        needs.extend(_face_alignment(required=config.faces.backend == "face-alignment"))
    return Diagnosis(device, method, needs)


def fetch(need: Need, store: ModelStore, progress: Progress | None = None) -> None:
    """Get one file that has a direct link; raises ModelStoreError (DownloadError) on failure."""
    if need.url is None:
        raise ValueError(f"{need.path} has no direct link")
    if need.kind is Kind.GENERATOR and need.name is not None:
        store.import_checkpoint(need.url, need.name, progress=progress)
    elif need.kind is Kind.PERCEPTUAL:
        fetch_perceptual(need.url, need.path, progress=progress)
    else:
        download(need.url, need.path, progress=progress)


def _face(store: ModelStore, name: str) -> Need:
    path = store.path(name)
    return Need(
        what="the FFHQ generator (models.face): inversion target and high-resolution texture",
        path=path,
        kind=Kind.GENERATOR,
        required=True,
        problem=_generator_problem(path),
        fix=(
            f"toonify models import {FFHQ_URL} --name {name}",
            f"offline: download that URL elsewhere, then toonify models import FILE --name {name}",
        ),
        url=FFHQ_URL,
        name=name,
    )


def _encoder(path: Path, invert: InvertSettings, method: Method, device: torch.device) -> Need:
    name = path.name.removesuffix(".safetensors")
    if invert.method == "auto":
        what = (
            f"an FFHQ encoder (invert.encoder), optional: invert.method auto uses it when present "
            f"(now {method} on {device.type}); on a CPU one forward pass instead of "
            f"{invert.steps} optimisation steps"
        )
    else:
        what = f"the FFHQ encoder (invert.encoder) for invert.method {method}"
    return Need(
        what=what,
        path=path,
        kind=Kind.ENCODER,
        required=invert.method != "auto",
        problem=_encoder_problem(path),
        fix=_browser_fix(E4E_PAGE, E4E_FILE, name),
        name=name,
    )


def _perceptual(path: Path) -> Need:
    return Need(
        what='NVIDIA\'s VGG16 for invert.loss = "perceptual" (the optimisation compares with it)',
        path=path,
        kind=Kind.PERCEPTUAL,
        required=True,
        problem=None if path.is_file() else "missing",
        fix=(
            f"toonify models fetch-vgg16   (downloads {VGG16_URL})",
            f"offline: download that URL elsewhere and copy it to {path}; "
            'or set invert.loss = "pixel" (no extra file, blurrier likeness)',
        ),
        url=VGG16_URL,
    )


def _style(store: ModelStore, name: str, style: StyleSettings, *, default: bool) -> Need:
    path = store.path(style.model)
    if style.kind == "psp":
        return Need(
            what=f"style {name!r}: pSp's toonify encoder and generator (styles.{name}.model)",
            path=path,
            kind=Kind.ENCODER,
            required=True,
            problem=_psp_problem(path),
            fix=_browser_fix(PSP_PAGE, PSP_FILE, style.model, default=default),
            name=style.model,
        )
    return Need(
        what=f"style {name!r}: a StyleGAN2 fine-tuned from FFHQ (styles.{name}.model)",
        path=path,
        kind=Kind.GENERATOR,
        required=True,
        problem=_generator_problem(path),
        fix=_browser_fix(
            f"{TOON_PAGE} (other toon models: README, Models)",
            TOON_FILE,
            style.model,
            default=default,
        ),
        name=style.model,
    )


def _face_alignment(*, required: bool) -> list[Need]:
    from inference.faces import fan_weight_urls

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    role = "face-alignment's weights (faces.backend = face-alignment)"
    if not required:
        role = "face-alignment's weights, optional: without them faces.backend auto uses dlib"
    needs = []
    for url in fan_weight_urls():
        path = folder / Path(urlparse(url).path).name
        needs.append(
            Need(
                what=role,
                path=path,
                kind=Kind.WEIGHTS,
                required=required,
                problem=None if path.is_file() else "missing",
                fix=(
                    "the bot downloads it at start-up when online",
                    f"offline: download {url} elsewhere and copy it into {folder}",
                ),
                url=url,
            )
        )
    return needs


def _browser_fix(page: str, file: str, name: str, *, default: bool = False) -> tuple[str, ...]:
    downloaded = f"{DOWNLOADS}/{file}"
    lines = [
        f"open {page} in a browser and download {file}, then",
        f"toonify models import {downloaded} --name {name}",
    ]
    if default:
        lines.append(f"(or let scripts/run import it: TOON={downloaded} scripts/run)")
    return tuple(lines)


def _generator_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    try:
        read_model_info(path)
    except CheckpointError as exc:
        return f"unreadable ({exc}): delete it and get it again"
    return None


def _encoder_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    try:
        read_encoder_info(path)
    except CheckpointError as exc:
        return f"unreadable ({exc}): delete it and get it again"
    return None


def _psp_problem(path: Path) -> str | None:
    problem = _encoder_problem(path)
    if problem is not None:
        return problem
    decoder = read_encoder_info(path).decoder
    if decoder is None:
        return "an encoder without a generator: import pSp's toonify checkpoint itself"
    if not path.with_name(f"{decoder}.safetensors").is_file():
        return f"its generator {decoder}.safetensors is missing: delete it and import it again"
    return None
