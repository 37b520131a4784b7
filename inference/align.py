"""FFHQ alignment of a face from its 68 landmarks, and the way back into the photo.

The framing is that of the script that made the FFHQ data set: the crop quad from eyes and
mouth and, where the quad leaves the photo, the crop reflect-padded and faded towards a blur
(sigma 2 % of the face) and towards its median colour. The generator saw faces framed so.

The pixels come from one bilinear sampling at the output's pixel centres instead of the
script's whole-photo shrink, full padded copy, warp to 4096 px and Lanczos reduction. Where the
face is larger than the output, the photo region under the quad is first antialiased for the
output's pixel size (a Lanczos reduction, as the script's last step) and enlarged twice again,
so the sampling blurs little. The padding's weights are computed where each output pixel falls
and its blur is read from a small copy. On the test photos the result is within half a grey
level of the script on average (tests/test_align.py); photos with detail at the output's pixel
size differ by about a level, aliased a little differently (bench/README.md).

Coordinates are photo pixels with pixel centres at integers, as landmark detectors give them.
A quad lists the crop's outer corners: top-left, bottom-left, bottom-right, top-right.
`AlignedFace.quad` is where the crop really came from, including the sub-pixel offset that the
script's shrink introduces, so that paste-back puts a face exactly where it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from PIL import Image
from scipy import ndimage

# A photo reduced to the output's pixel size is enlarged this many times before it is sampled.
_ENLARGED = 2
# The padding's blur is computed on a copy with this many pixels per sigma.
_BLUR_PIXELS_PER_SIGMA = 4.0
# The padding's median colour comes from about this many of its pixels, evenly spread.
_MEDIAN_SAMPLES = 100_000
# The script's 8-bit warp truncates; values a hair under an integer are that integer.
_FLOOR_SLACK = 1e-3


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and where it came from: `quad` in the original photo's coordinates."""

    image: Image.Image
    quad: np.ndarray

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo coordinates -> this crop's pixel coordinates."""
        origin, axes = _frame(self.quad)
        size = np.array(self.image.size, dtype=np.float64)
        local = np.linalg.solve(axes, (np.asarray(points, np.float64) - origin).T).T
        return local * size - 0.5

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """This crop's pixel coordinates -> photo coordinates."""
        origin, axes = _frame(self.quad)
        size = np.array(self.image.size, dtype=np.float64)
        local = (np.asarray(points, np.float64) + 0.5) / size
        photo: np.ndarray = origin + local @ axes.T
        return photo


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad [4, 2] from 68 iBUG landmarks (x, y)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks as [68, 2], got {lm.shape}")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - _rot90(eye_to_mouth)
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_face(photo: Image.Image, landmarks: np.ndarray, size: int = 1024) -> AlignedFace:
    """Crop one face the FFHQ way into a `size` x `size` RGB image."""
    if photo.mode != "RGB":
        raise ValueError(f"expected an RGB photo, got mode {photo.mode}")
    frame = _Frame.of(photo.size, ffhq_quad(landmarks), size)
    box = frame.reads(photo.size)
    antialiased, enlarged = _prefiltered(_pixels(photo.crop(box)), frame.photo_per_pixel)
    layer = _Layer(enlarged.to(torch.float32, memory_format=torch.contiguous_format), box)
    grid = _Grid(frame.quad, size)
    face = grid.sample(layer)
    if frame.pad is not None:
        face = _PaddedPhoto(frame, layer, _blurred(frame, box, antialiased)).blend(face, grid)
    # Rounding down like the script's 8-bit warp keeps its grey levels (half a level darker).
    face = face.add_(_FLOOR_SLACK).floor_().clamp_(0, 255)
    pixels = face.to(torch.uint8, memory_format=torch.channels_last)[0].permute(1, 2, 0)
    return AlignedFace(Image.fromarray(pixels.numpy(), "RGB"), frame.quad)


def paste_back(
    photo: Image.Image,
    faces: Sequence[tuple[Image.Image, np.ndarray]],
    feather: float = 0.1,
) -> Image.Image:
    """Warp each (face image, quad) into a copy of the photo under a feathered mask.

    The mask is 1 inside the crop square and fades to 0 over the outer `feather` of its side, so
    pixels outside every quad are returned unchanged.
    """
    canvas = photo.convert("RGB") if photo.mode != "RGB" else photo.copy()
    for face, quad in faces:
        _paste_one(canvas, face.convert("RGB"), np.asarray(quad, np.float64), feather)
    return canvas


def _paste_one(canvas: Image.Image, face: Image.Image, quad: np.ndarray, feather: float) -> None:
    """Only the quad's bounding box of the photo is read, blended and written back."""
    left, top, right, bottom = _bounds(quad)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(right + 1, canvas.width), min(bottom + 1, canvas.height)
    if x1 <= x0 or y1 <= y0:
        return
    origin, axes = _frame(quad)
    # Brought to its place's size with Lanczos (a larger face also enlarged twice again, as in
    # align_face), then turned into place bilinearly.
    side = math.ceil(max(np.hypot(*axes[:, 0]), np.hypot(*axes[:, 1])))
    pixels = _pixels(face)
    if face.width > side:
        _, pixels = _prefiltered(pixels, face.width / side)
    elif face.width < side:
        pixels = F.interpolate(pixels, size=(side, side), mode="lanczos", antialias=True)
    # Photo pixel -> position in the crop square, -1 to 1 along each side (grid_sample's).
    inverse = 2.0 * np.linalg.inv(axes)
    start = inverse @ (np.array([x0, y0], np.float64) - origin) - 1.0
    grid = _affine_grid(start, inverse[:, 0], inverse[:, 1], (y1 - y0, x1 - x0))
    warped = F.grid_sample(
        pixels.to(torch.float32, memory_format=torch.contiguous_format),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0].permute(1, 2, 0)
    # How far inside the square, as a fraction of its side: 0 on its edge.
    inset = grid[0].abs_().amax(dim=-1, keepdim=True).neg_().add_(1.0).mul_(0.5)
    if feather > 0:
        ramp = inset.div_(feather).clamp_(0.0, 1.0)
        mask = ramp * ramp * (3.0 - 2.0 * ramp)
    else:
        mask = (inset >= 0).float()
    old = _pixels(canvas.crop((x0, y0, x1, y1)))[0].permute(1, 2, 0)
    # Where the mask is 0, lerp gives the old value exactly: the photo outside stays untouched.
    new = old.float().lerp_(warped, mask).round_().clamp_(0, 255).to(torch.uint8)
    canvas.paste(Image.fromarray(new.numpy(), "RGB"), (x0, y0))


@dataclass(frozen=True)
class _Frame:
    """The script's crop and padding decisions, taken in its shrunk photo as it takes them."""

    quad: np.ndarray  # where the crop comes from, in photo pixels
    photo_per_pixel: float  # photo pixels per output pixel along the quad's sides
    scale: np.ndarray  # photo pixels per shrunk-photo pixel, (x, y)
    crop: tuple[int, int, int, int]  # the script's crop box, in shrunk-photo pixels
    pad: np.ndarray | None  # its padding (left, top, right, bottom), shrunk pixels; None: none
    sigma: float  # the padding's blur, shrunk pixels

    @classmethod
    def of(cls, photo_size: tuple[int, int], quad: np.ndarray, size: int) -> _Frame:
        qsize = float(np.hypot(*(quad[3] - quad[0])))
        if qsize < 8:
            raise ValueError(f"the face is too small to align ({qsize:.1f} px)")
        width, height = photo_size
        shrink = math.floor(qsize / size * 0.5)
        reduced = photo_size
        if shrink > 1:
            reduced = (round(width / shrink), round(height / shrink))
            quad = quad / shrink
            qsize /= shrink
        scale = np.array([width / reduced[0], height / reduced[1]])
        border = max(round(qsize * 0.1), 3)
        x0, y0, x1, y1 = _bounds(quad)
        crop = (
            max(x0 - border, 0),
            max(y0 - border, 0),
            min(x1 + border, reduced[0]),
            min(y1 + border, reduced[1]),
        )
        x0, y0, x1, y1 = _bounds(quad - crop[:2])
        pad = np.array([-x0, -y0, x1 - (crop[2] - crop[0]), y1 - (crop[3] - crop[1])]) + border
        pad = np.maximum(pad, 0)
        padding = np.maximum(pad, round(qsize * 0.3)) if pad.max() > border - 4 else None
        photo_quad = (quad + 0.5) * scale - 0.5
        side = float(np.hypot(*(photo_quad[3] - photo_quad[0])))
        return cls(photo_quad, side / size, scale, crop, padding, qsize * 0.02)

    def reads(self, photo_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The photo pixels the output depends on: the crop when padded, else the quad's."""
        if self.pad is not None:
            lo = np.floor(np.array(self.crop[:2]) * self.scale)
            hi = np.ceil(np.array(self.crop[2:]) * self.scale)
        else:
            # Lanczos-3 reduction, Lanczos-3 enlargement, bilinear: no pixel read sees the edge.
            reach = 5 * max(1.0, self.photo_per_pixel) + 2
            lo = np.floor(self.quad.min(axis=0) + 0.5 - reach)
            hi = np.ceil(self.quad.max(axis=0) + 0.5 + reach)
        x0, y0 = np.maximum(lo, 0).astype(int)
        x1, y1 = np.minimum(hi, photo_size).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    def to_padded(self) -> tuple[np.ndarray, np.ndarray]:
        """gain, offset: photo pixel -> pixel of the script's padded image (centres at integers)."""
        assert self.pad is not None
        gain = 1.0 / self.scale
        return gain, 0.5 * gain - 0.5 - np.array(self.crop[:2]) + self.pad[:2]

    def mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """FFHQ's padding mask at padded-image pixels: 0 on the photo's edge, 1 on the padding's."""
        assert self.pad is not None
        left, top, right, bottom = (float(p) for p in self.pad)
        width = self.crop[2] - self.crop[0] + left + right
        height = self.crop[3] - self.crop[1] + top + bottom
        mask_x = 1.0 - torch.minimum(x / left, (width - 1 - x) / right)
        mask_y = 1.0 - torch.minimum(y / top, (height - 1 - y) / bottom)
        return torch.maximum(mask_x, mask_y)


@dataclass(frozen=True)
class _Layer:
    """An image laid over the photo: `pixels` [1, C, h, w] cover `box` (x0, y0, x1, y1)."""

    pixels: torch.Tensor
    box: tuple[float, float, float, float]

    def normalise(self) -> tuple[np.ndarray, np.ndarray]:
        """gain, offset: photo pixel -> grid_sample's coordinates (-1 and 1 at the edges)."""
        lo, hi = np.array(self.box[:2], float), np.array(self.box[2:], float)
        gain = 2.0 / (hi - lo)
        return gain, (0.5 - lo) * gain - 1.0


class _Grid:
    """The output's pixel centres in photo pixels: an affine map of the pixel indices."""

    def __init__(self, quad: np.ndarray, size: int) -> None:
        origin, axes = _frame(quad)
        self.size = size
        self.step = axes / size
        self.origin = origin + self.step.sum(axis=1) * 0.5

    def affine(self, gain: np.ndarray, offset: np.ndarray) -> torch.Tensor:
        """gain * p + offset for every output pixel's photo position p: [1, n, n, 2] (x, y)."""
        start = gain * self.origin + offset
        return _affine_grid(start, gain * self.step[:, 0], gain * self.step[:, 1], (self.size,) * 2)

    def sample(self, layer: _Layer) -> torch.Tensor:
        """Bilinear samples of the layer at the output's pixel centres: [1, C, n, n]."""
        grid = self.affine(*layer.normalise())
        return F.grid_sample(
            layer.pixels, grid, mode="bilinear", padding_mode="border", align_corners=False
        )


class _PaddedPhoto:
    """FFHQ step 6 (reflect-pad, fade to a blur, then to the median colour), where it is read.

    The script builds the whole padded image, blurs it (sigma = 2 % of the face) and warps it.
    Here the weights are computed where each output pixel falls, and the blur comes from a
    copy reduced to a quarter sigma per pixel: its reduction and the bilinear read-back add
    variance, which the Gaussian on the copy leaves out.
    """

    def __init__(self, frame: _Frame, photo: _Layer, blur: _Layer) -> None:
        self.frame = frame
        self.photo = photo
        self.blur = blur

    def blend(self, face: torch.Tensor, grid: _Grid) -> torch.Tensor:
        """The sampled photo faded like the script's padded image, at the same points."""
        where = grid.affine(*self.frame.to_padded())
        mask = self.frame.mask(where[..., 0], where[..., 1])[:, None]
        face = face.lerp_(grid.sample(self.blur), (mask * 3.0 + 1.0).clamp_(0.0, 1.0))
        return face.lerp_(self._median()[None, :, None, None], mask.clamp_(0.0, 1.0))

    def _median(self) -> torch.Tensor:
        """The median colour of the script's blended padded image, from a grid of its pixels."""
        frame = self.frame
        assert frame.pad is not None
        width = frame.crop[2] - frame.crop[0] + int(frame.pad[0] + frame.pad[2])
        height = frame.crop[3] - frame.crop[1] + int(frame.pad[1] + frame.pad[3])
        step = max(1, math.ceil(math.sqrt(width * height / _MEDIAN_SAMPLES)))
        ys, xs = torch.meshgrid(
            torch.arange(step // 2, height, step, dtype=torch.float32),
            torch.arange(step // 2, width, step, dtype=torch.float32),
            indexing="ij",
        )
        gain, offset = frame.to_padded()
        photo_x = (xs - float(offset[0])) / float(gain[0])
        photo_y = (ys - float(offset[1])) / float(gain[1])
        raw = _read(self.photo, photo_x, photo_y, "nearest")
        blur = _read(self.blur, photo_x, photo_y, "bilinear")
        weight = (frame.mask(xs, ys) * 3.0 + 1.0).clamp_(0.0, 1.0)
        return raw.lerp_(blur, weight).flatten(1).median(dim=1).values


def _blurred(frame: _Frame, box: tuple[int, int, int, int], photo: torch.Tensor) -> _Layer:
    """The script's blur of its reflect-padded crop, on a copy with a quarter sigma per pixel.

    `photo` (uint8, the pixels of `box`, antialiased at any scale) is reduced to that spacing,
    then read where each of the copy's pixels falls in the crop once mirrored about the crop's
    edge pixels, as the script mirrors it; the copy spans the script's padded image, so the
    Gaussian meets the same outer edge. The reduction and the two bilinear readings add about
    spacing^2 / 6 of variance each, which the Gaussian leaves out.
    """
    assert frame.pad is not None
    sigma = frame.sigma * float(frame.scale.mean())
    spacing = sigma / _BLUR_PIXELS_PER_SIGMA
    height, width = photo.shape[2:]
    size = (round((box[3] - box[1]) / spacing), round((box[2] - box[0]) / spacing))
    readings = 2
    if size[0] < height and size[1] < width:
        photo = F.interpolate(photo, size=size, mode="bilinear", antialias=True)
        readings = 3
    source = _Layer(photo.to(torch.float32, memory_format=torch.contiguous_format), box)
    crop = np.array(frame.crop, float)
    padded = crop[2:] - crop[:2] + frame.pad[:2] + frame.pad[2:]
    count = np.maximum(np.rint(padded * frame.scale / spacing), 1).astype(int)
    x, y = (
        _mirrored(padded[axis], count[axis], frame.pad[axis], crop[axis + 2] - crop[axis])
        + crop[axis]
        for axis in range(2)
    )
    rows, columns = torch.meshgrid(
        torch.from_numpy((y + 0.5) * frame.scale[1] - 0.5).float(),
        torch.from_numpy((x + 0.5) * frame.scale[0] - 0.5).float(),
        indexing="ij",
    )
    pixels = _read(source, columns, rows, "bilinear").permute(1, 2, 0).numpy()
    rest = math.sqrt(max(sigma**2 - readings * spacing**2 / 6, 0.0)) / spacing
    blurred = torch.from_numpy(ndimage.gaussian_filter(pixels, [rest, rest, 0]))
    lo = (crop[:2] - frame.pad[:2]) * frame.scale
    hi = lo + padded * frame.scale
    return _Layer(blurred.permute(2, 0, 1)[None].contiguous(), (*lo, *hi))


def _mirrored(extent: float, count: int, pad: float, length: float) -> np.ndarray:
    """Centres of `count` pixels spanning a padded image `extent` pixels wide, as pixels of the
    crop (`length` wide, `pad` in) that numpy's reflect padding copies there."""
    centres = (np.arange(count) + 0.5) * (extent / count) - 0.5 - pad
    period = 2.0 * max(length - 1.0, 1e-9)
    mirrored: np.ndarray = (length - 1.0) - np.abs(np.mod(centres, period) - (length - 1.0))
    return mirrored


def _read(layer: _Layer, x: torch.Tensor, y: torch.Tensor, mode: str) -> torch.Tensor:
    """Samples of a layer at photo positions: [C, *x.shape]."""
    gain, offset = layer.normalise()
    grid = torch.stack(
        [x * float(gain[0]) + float(offset[0]), y * float(gain[1]) + float(offset[1])], -1
    )
    sampled = F.grid_sample(
        layer.pixels, grid[None], mode=mode, padding_mode="border", align_corners=False
    )
    return sampled[0]


def _pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as [1, 3, h, w] uint8, on numpy's read-only view of Pillow's bytes.

    Nothing writes to it (every step makes a new tensor), so torch's warning about read-only
    arrays does not apply, and a copy of a photo-sized array is saved.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None]


def _prefiltered(region: torch.Tensor, photo_per_pixel: float) -> tuple[torch.Tensor, ...]:
    """The region antialiased for the output's pixel size (a Lanczos reduction, as the script's
    last step), and that enlarged twice again (Lanczos), so that bilinear sampling between its
    pixels adds little blur; the region itself where the output is not smaller."""
    if photo_per_pixel <= 1.0:
        return region, region
    height, width = region.shape[2:]
    size = (max(1, round(height / photo_per_pixel)), max(1, round(width / photo_per_pixel)))
    reduced = F.interpolate(region, size=size, mode="lanczos", antialias=True)
    enlarged = F.interpolate(
        reduced, size=(size[0] * _ENLARGED, size[1] * _ENLARGED), mode="lanczos", antialias=True
    )
    return reduced, enlarged


def _affine_grid(
    start: np.ndarray, along_x: np.ndarray, along_y: np.ndarray, shape: tuple[int, int]
) -> torch.Tensor:
    """start + j * along_x + i * along_y at row i, column j: [1, rows, columns, 2] (x, y)."""
    rows, columns = shape
    out = torch.empty(1, rows, columns, 2)
    for axis in range(2):
        across = torch.from_numpy(start[axis] + along_x[axis] * np.arange(columns)).float()
        down = torch.from_numpy(along_y[axis] * np.arange(rows)).float()
        out[0, :, :, axis] = across[None, :] + down[:, None]
    return out


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        math.floor(quad[:, 0].min()),
        math.floor(quad[:, 1].min()),
        math.ceil(quad[:, 0].max()),
        math.ceil(quad[:, 1].max()),
    )


def _frame(quad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quad's top-left corner and its two sides as columns (x side, y side)."""
    quad = np.asarray(quad, np.float64)
    return quad[0], np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)


def _rot90(v: np.ndarray) -> np.ndarray:
    """A quarter turn, (x, y) -> (-y, x)."""
    return np.array([-v[1], v[0]])
