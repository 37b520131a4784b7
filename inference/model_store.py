"""The models directory: public checkpoints imported (from a path or a URL) as canonical
`.safetensors` files, blends of them, and what is there.

Downloads resume: bytes land in `<dir>/.downloads/<name>.download.part`, a re-run asks the
server for the rest with a Range request, and only a complete file (checked against the
expected sha256 when one is given) is converted. The original is deleted after conversion;
the canonical file records where it came from and its sha256.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from inference.blend import blend
from inference.checkpoints import (
    CheckpointError,
    CheckpointFormat,
    ModelInfo,
    load_checkpoint,
    load_generator,
    read_model_info,
    save_generator,
)
from inference.encoder_checkpoints import (
    EncoderInfo,
    NotAnEncoderError,
    import_encoder,
    read_encoder_checkpoint,
    read_encoder_info,
)
from inference.errors import ModelLoadError
from inference.invert import PerceptualModelError, load_perceptual
from inference.stylegan2 import Generator

SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0

# Bytes received so far, and the total when the server says.
Progress = Callable[[int, int | None], None]


class ModelStoreError(ModelLoadError):
    """An import, blend or lookup that cannot proceed; str() says why, for a person."""


class DownloadError(ModelStoreError):
    """A download that did not complete; what was received is kept for the next try.

    The message says only what happened: each caller adds how to get the file another way,
    since that differs between an import, fetch-vgg16 and scripts/run.
    """

    def __init__(self, url: str, done: int, reason: str) -> None:
        resume = "; the part received is kept, run the same command again to resume" if done else ""
        super().__init__(f"download of {url} failed after {done} bytes ({reason}){resume}")


@dataclass(frozen=True)
class ImportResult:
    info: ModelInfo | None  # the generator written (a pSp/e4e checkpoint's decoder), if any
    format: CheckpointFormat
    sha256: str
    encoder: EncoderInfo | None = None  # when the file was a pSp/e4e encoder checkpoint


@dataclass(frozen=True)
class ModelEntry:
    """One file in the models directory: its metadata, or why it could not be read."""

    name: str
    info: ModelInfo | None
    error: str | None = None
    encoder: EncoderInfo | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, *, progress: Progress | None = None) -> Path:
    """GET `url` into `dest`, resuming `dest.part` from where an earlier attempt stopped."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            done, total, mode = _resume_point(url, response, done)
            if mode is not None:
                with part.open(mode) as f:
                    for chunk in response.iter_bytes():  # as received: nothing lost on a cut
                        f.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
    except httpx.HTTPError as exc:
        raise DownloadError(url, done, str(exc) or type(exc).__name__) from None
    if total is not None and done != total:
        raise DownloadError(url, done, f"the connection closed {total - done} bytes short")
    part.replace(dest)
    return dest


def _resume_point(
    url: str, response: httpx.Response, done: int
) -> tuple[int, int | None, str | None]:
    """(bytes already on disk, total size, file mode) for this response; mode None: complete."""
    status = response.status_code
    if status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
        if not match or int(match[1]) != done:
            raise ModelStoreError(
                f"{url}: the server resumed at the wrong offset; delete the .part file"
            )
        total = None if match[2] == "*" else int(match[2])
        return done, total, "ab"
    if status == 416 and done:
        match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("content-range", ""))
        if match and int(match[1]) == done:
            return done, done, None
    if status == 200:
        length = response.headers.get("content-length")
        return 0, int(length) if length else None, "wb"
    raise DownloadError(url, done, f"HTTP {status} {response.reason_phrase}")


def fetch_perceptual(url: str, target: Path, *, progress: Progress | None = None) -> Path:
    """Download NVIDIA's TorchScript VGG16 to `target` and check that it loads: a server that
    answers with something else (an HTML error page, say) leaves nothing behind."""
    download(url, target, progress=progress)
    try:
        load_perceptual(target)
    except PerceptualModelError:
        target.unlink()
        raise ModelStoreError(f"{url} is not a TorchScript network; nothing was kept") from None
    return target


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class ModelStore:
    """The canonical generators in one directory, by name (`<name>.safetensors`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        if not NAME_PATTERN.fullmatch(name):
            raise ModelStoreError(
                f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
            )
        return self.directory / f"{name}{SUFFIX}"

    def entries(self) -> list[ModelEntry]:
        entries = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            name = path.name.removesuffix(SUFFIX)
            try:
                entries.append(ModelEntry(name, read_model_info(path)))
            except CheckpointError as exc:
                entries.append(_encoder_entry(name, path, exc))
        return entries

    def load(self, name: str, device: str | torch.device = "cpu") -> Generator:
        path = self.path(name)
        if not path.exists():
            raise ModelStoreError(
                f"no model {name!r} in {self.directory} (see `toonify models list`)"
            )
        return load_generator(path, device)

    def import_checkpoint(
        self,
        source: str,
        name: str,
        *,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> ImportResult:
        """Convert a checkpoint (path or http(s) URL) in any supported format to `name`."""
        target = self._new(name)
        expected = _check_sha256(sha256)
        if is_url(source):
            downloaded = download(source, self._download_path(name), progress=progress)
            try:
                return self._convert(downloaded, source, target, expected)
            finally:  # converted, or not worth resuming (complete but wrong or unreadable)
                downloaded.unlink(missing_ok=True)
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelStoreError(f"{source}: no such file")
        return self._convert(path, str(path.resolve()), target, expected)

    def blend(
        self,
        name: str,
        *,
        structure: str,
        texture: str,
        resolution: int,
        blend_width: float | None = None,
    ) -> ModelInfo:
        """Blend two stored models (structure below `resolution`, texture above) as `name`."""
        target = self._new(name)
        blended = blend(self.load(structure), self.load(texture), resolution, blend_width)
        width = "hard switch" if blend_width is None else f"blend width {blend_width:g}"
        source = (
            f"blend of {structure} (structure) and {texture} (texture) at {resolution} px, {width}"
        )
        save_generator(blended, target, source=source)
        return read_model_info(target)

    def _new(self, name: str) -> Path:
        target = self.path(name)
        if target.exists():
            raise ModelStoreError(f"model {name!r} exists ({target}); delete it first")
        return target

    def _download_path(self, name: str) -> Path:
        return self.directory / ".downloads" / f"{name}.download"

    def _convert(self, path: Path, source: str, target: Path, expected: str | None) -> ImportResult:
        digest = sha256_file(path)
        if expected is not None and digest != expected:
            raise ModelStoreError(f"{source}: sha256 is {digest}, expected {expected}")
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as not_a_generator:
            return self._convert_encoder(path, source, target, digest, not_a_generator)
        save_generator(
            loaded.generator, target, source=f"{source} ({loaded.format}, sha256 {digest})"
        )
        return ImportResult(read_model_info(target), loaded.format, digest)

    def _convert_encoder(
        self, path: Path, source: str, target: Path, digest: str, not_a_generator: CheckpointError
    ) -> ImportResult:
        """A pSp/e4e checkpoint: the encoder as `target`, its generator as `<name>-decoder`."""
        try:
            ckpt = read_encoder_checkpoint(path)
        except NotAnEncoderError:
            raise not_a_generator from None
        self._new(f"{target.name.removesuffix(SUFFIX)}-decoder")
        kind = ckpt.encoder.arch.kind
        decoder = import_encoder(ckpt, target, source=f"{source} ({kind}, sha256 {digest})")
        info = read_model_info(decoder) if decoder is not None else None
        return ImportResult(info, "rosinality", digest, read_encoder_info(target))


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    normalised = value.strip().lower()
    if not SHA256_PATTERN.fullmatch(normalised):
        raise ModelStoreError(f"--sha256 {value!r} is not 64 hexadecimal digits")
    return normalised


def _encoder_entry(name: str, path: Path, not_a_generator: CheckpointError) -> ModelEntry:
    """A file that is not a generator: an encoder, or unreadable for the generator's reason."""
    try:
        return ModelEntry(name, None, encoder=read_encoder_info(path))
    except NotAnEncoderError:
        return ModelEntry(name, None, str(not_a_generator))
    except CheckpointError as exc:
        return ModelEntry(name, None, str(exc))
