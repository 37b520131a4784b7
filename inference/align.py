"""FFHQ alignment of a face from its 68 landmarks, and the way back into the photo.

The steps and constants are those of the script that made the FFHQ data set (quad from eyes and
mouth, shrink, crop with border, reflect-pad with blur and median fill, quad transform, Lanczos
resize), so the generator sees faces framed as in training. What differs is only for speed:

- the shrink resizes only the region around the face (Pillow's `box`), which gives exactly the
  pixels that resizing the whole photo and then cropping gives;
- the padded image is made only where the quad transform reads it; the blur of the padding
  (sigma = 2 % of the face, hundreds of taps on big faces) runs on block averages and is
  interpolated back (< 0.2 grey levels from the direct filter, which takes seconds), and on
  large images the median fill colour comes from every third pixel;
- the quad transform renders at 3x the output size (at most 4096) instead of always 4096
  before the Lanczos resize: on average 0.1 grey level from the original, at most 2 (pass
  `transform_size=4096` for the original's numbers; see tests/test_align.py).

Coordinates are photo pixels with pixel centres at integers, as landmark detectors give them.
A quad lists the crop's outer corners: top-left, bottom-left, bottom-right, top-right.
`AlignedFace.quad` is where the crop really came from, including the sub-pixel offset that the
shrink's rounding introduces, so that paste-back puts a face exactly where it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

FFHQ_TRANSFORM_SIZE = 4096
# The padding blur runs on blocks of a sixth of sigma: within 0.2 grey levels of the direct filter.
_BLUR_SIGMA_PER_BLOCK = 6.0
# Up to this size the median colour of the padding is exact; above, it uses every third pixel.
_EXACT_MEDIAN_PIXELS = 4_000_000
# Rendering the quad at 3x the output size, then Lanczos, is close to FFHQ's 4096 (see above).
_OVERSAMPLING = 3


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
        return origin + local @ axes.T


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


def align_face(
    photo: Image.Image,
    landmarks: np.ndarray,
    size: int = 1024,
    transform_size: int | None = None,
) -> AlignedFace:
    """Crop one face the FFHQ way into a `size` x `size` RGB image."""
    if photo.mode != "RGB":
        raise ValueError(f"expected an RGB photo, got mode {photo.mode}")
    quad = ffhq_quad(landmarks)
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    if qsize < 8:
        raise ValueError(f"the face is too small to align ({qsize:.1f} px)")

    # Shrink: faces much larger than the output are first reduced by an integer factor.
    width, height = photo.size
    shrink = math.floor(qsize / size * 0.5)
    if shrink > 1:
        reduced = (round(width / shrink), round(height / shrink))
        scale = np.array([width / reduced[0], height / reduced[1]])
        quad = quad / shrink
        qsize /= shrink
    else:
        reduced = (width, height)
        scale = np.ones(2)
    photo_quad = (quad + 0.5) * scale - 0.5

    # Crop with a border around the quad.
    border = max(round(qsize * 0.1), 3)
    x0, y0, x1, y1 = _bounds(quad)
    box = (max(x0 - border, 0), max(y0 - border, 0))
    box += (min(x1 + border, reduced[0]), min(y1 + border, reduced[1]))
    if shrink > 1:
        region = photo.resize(
            (box[2] - box[0], box[3] - box[1]),
            Image.Resampling.LANCZOS,
            box=(
                box[0] * scale[0],
                box[1] * scale[1],
                min(box[2] * scale[0], width),
                min(box[3] * scale[1], height),
            ),
        )
    else:
        region = photo.crop(box)
    quad = quad - box[:2]

    # Pad where the quad leaves the photo.
    x0, y0, x1, y1 = _bounds(quad)
    pad = np.array([-x0, -y0, x1 - region.width, y1 - region.height]) + border
    pad = np.maximum(pad, 0)
    if pad.max() > border - 4:
        pad = np.maximum(pad, round(qsize * 0.3))
        quad = quad + pad[:2]
        # Only the part of the padded image that the transform reads is made.
        x0, y0, x1, y1 = _bounds(quad)
        window = (x0 - 2, y0 - 2, x1 + 2, y1 + 2)
        region = _pad_blend(np.asarray(region), pad, qsize, window)
        quad = quad - window[:2]

    # Quad transform, then an antialiased resize to the output size.
    render = transform_size or _transform_size(size)
    face = region.transform(
        (render, render),
        Image.Transform.QUAD,
        tuple((quad + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if render != size:
        face = face.resize((size, size), Image.Resampling.LANCZOS)
    return AlignedFace(face, photo_quad)


def paste_back(
    photo: Image.Image,
    faces: Sequence[tuple[Image.Image, np.ndarray]],
    feather: float = 0.1,
) -> Image.Image:
    """Warp each (face image, quad) into a copy of the photo under a feathered mask.

    The mask is 1 inside the crop square and fades to 0 over the outer `feather` of its side, so
    pixels outside every quad are returned unchanged.
    """
    canvas = np.array(photo.convert("RGB"))
    for face, quad in faces:
        _paste_one(canvas, face.convert("RGB"), np.asarray(quad, np.float64), feather)
    return Image.fromarray(canvas, "RGB")


def _paste_one(canvas: np.ndarray, face: Image.Image, quad: np.ndarray, feather: float) -> None:
    height, width = canvas.shape[:2]
    left, top, right, bottom = _bounds(quad)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right + 1, width), min(bottom + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    origin, axes = _frame(quad)
    # A face much larger than its place in the photo is reduced first, or the warp would alias.
    side = math.ceil(max(np.hypot(*axes[:, 0]), np.hypot(*axes[:, 1])))
    if face.width > side or face.height > side:
        face = face.resize((side, side), Image.Resampling.LANCZOS)
    inverse = np.linalg.inv(axes)
    to_face = np.diag([face.width, face.height]) @ inverse
    shift = to_face @ (np.array([x0, y0]) - origin - 0.5)
    coefficients = (*to_face[0], shift[0], *to_face[1], shift[1])
    # Warped in floating point: Pillow's 8-bit warps truncate, which would darken by half a level.
    warped = np.stack(
        [
            np.asarray(
                band.convert("F").transform(
                    (x1 - x0, y1 - y0),
                    Image.Transform.AFFINE,
                    coefficients,
                    Image.Resampling.BICUBIC,
                )
            )
            for band in face.split()
        ],
        axis=-1,
    )

    ys, xs = np.mgrid[y0:y1, x0:x1]
    centres = np.stack([xs - origin[0], ys - origin[1]], axis=-1).astype(np.float64)
    local = centres @ inverse.T
    inset = np.minimum(local, 1.0 - local).min(axis=-1)
    ramp = np.clip(inset / feather, 0.0, 1.0) if feather > 0 else (inset >= 0).astype(float)
    mask = (ramp * ramp * (3.0 - 2.0 * ramp))[..., None].astype(np.float32)

    old = canvas[y0:y1, x0:x1]
    mixed = old + (warped - old) * mask
    new = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    canvas[y0:y1, x0:x1] = np.where(mask > 0, new, old)


def _pad_blend(
    image: np.ndarray, pad: np.ndarray, qsize: float, window: tuple[int, int, int, int]
) -> Image.Image:
    """FFHQ step 6, made only on the `window` (x0, y0, x1, y1) of the padded image.

    Reflect-pad, fade the padding towards a blur, then towards the median colour of the whole
    blurred image. On large images that median is taken over every third pixel each way:
    hundredths of a grey level from the exact one, for a ninth of the work.
    """
    left, top, right, bottom = (int(p) for p in pad)
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    blur = _Blur(padded, qsize * 0.02)
    mask = _PadMask(pad, padded.shape)

    step = 1 if padded.shape[0] * padded.shape[1] <= _EXACT_MEDIAN_PIXELS else 3
    grid = padded[step // 2 :: step, step // 2 :: step]
    ny, nx = grid.shape[:2]
    weights = mask.at(0, 0, nx, ny, step)
    sample = grid + (blur.at(0, 0, nx, ny, step) - grid) * np.clip(weights * 3.0 + 1.0, 0.0, 1.0)
    median = np.median(sample, axis=(0, 1))

    x0, y0, x1, y1 = window
    raw = padded[y0:y1, x0:x1]
    weights = mask.at(x0, y0, x1 - x0, y1 - y0)
    out = raw + (blur.at(x0, y0, x1 - x0, y1 - y0) - raw) * np.clip(weights * 3.0 + 1.0, 0.0, 1.0)
    out += (median - out) * np.clip(weights, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


class _PadMask:
    """FFHQ's padding mask: 0 on the photo's edge, 1 on the padded image's edge, < 0 inside."""

    def __init__(self, pad: np.ndarray, shape: tuple[int, ...]) -> None:
        self.left, self.top, self.right, self.bottom = (float(p) for p in pad)
        self.height, self.width = shape[:2]

    def at(self, x0: int, y0: int, nx: int, ny: int, step: int = 1) -> np.ndarray:
        """[ny, nx, 1] at pixels x0 + step * j + step // 2 (and the same for y)."""
        x = (x0 + step // 2 + step * np.arange(nx)).astype(np.float32)
        y = (y0 + step // 2 + step * np.arange(ny)).astype(np.float32)
        mask_x = 1.0 - np.minimum(x / self.left, (self.width - 1 - x) / self.right)
        mask_y = 1.0 - np.minimum(y / self.top, (self.height - 1 - y) / self.bottom)
        return np.maximum(mask_x[None, :], mask_y[:, None])[..., None]


class _Blur:
    """scipy's Gaussian (mode reflect) of an image, read back on any regular grid of pixels.

    A wide sigma runs on block averages: block-averaging by k and bilinear interpolation back
    add variances of about (k^2 - 1) / 12 and k^2 / 6, and the Gaussian on the blocks supplies
    the rest. The image is first mirrored by the filter's reach, as scipy's reflect mode does,
    so that the blocks' own edges never matter.
    """

    def __init__(self, image: np.ndarray, sigma: float) -> None:
        self.block = math.floor(sigma / _BLUR_SIGMA_PER_BLOCK)
        if self.block < 2:
            self.full = ndimage.gaussian_filter(image.astype(np.float32), [sigma, sigma, 0])
            return
        k = self.block
        h, w, _ = image.shape
        self.margin = k * math.ceil((4 * sigma + k) / k)
        m = self.margin
        extended = np.pad(image, ((m, m - h % k), (m, m - w % k), (0, 0)), mode="symmetric")
        blocks = extended.reshape(extended.shape[0] // k, k, -1, k, 3)
        blocks = blocks.mean(axis=(1, 3), dtype=np.float32)
        rest = sigma**2 - (k**2 - 1) / 12 - k**2 / 6
        self.small = ndimage.gaussian_filter(blocks, [math.sqrt(rest) / k] * 2 + [0])
        self.channels = [
            Image.fromarray(np.ascontiguousarray(self.small[..., c]), "F") for c in range(3)
        ]

    def at(self, x0: int, y0: int, nx: int, ny: int, step: int = 1) -> np.ndarray:
        """[ny, nx, 3] at pixels x0 + step * j + step // 2 (and the same for y); step is odd."""
        half = step // 2
        if self.block < 2:
            return self.full[y0 + half :: step, x0 + half :: step][:ny, :nx]
        m, k = self.margin, self.block
        if step == 1:  # Pillow's bilinear enlargement, block centres on block centres.
            box = ((m + x0) / k, (m + y0) / k, (m + x0 + nx) / k, (m + y0 + ny) / k)
            return np.stack(
                [
                    np.asarray(channel.resize((nx, ny), Image.Resampling.BILINEAR, box=box))
                    for channel in self.channels
                ],
                axis=-1,
            )
        # The same interpolation on a sparse grid, where Pillow would low-pass the reduction.
        ys = (m + y0 + half + step * np.arange(ny) + 0.5) / k - 0.5
        xs = (m + x0 + half + step * np.arange(nx) + 0.5) / k - 0.5
        return _lerp(_lerp(self.small, ys, axis=0), xs, axis=1)


def _lerp(values: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `values` at fractional indices along one axis, edges held."""
    n = values.shape[axis]
    lo = np.clip(np.floor(positions).astype(np.intp), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    t = np.clip(positions - lo, 0.0, 1.0).astype(np.float32).reshape(shape)
    below, above = np.take(values, lo, axis=axis), np.take(values, hi, axis=axis)
    return below + (above - below) * t


def _transform_size(size: int) -> int:
    return max(size, min(_OVERSAMPLING * size, FFHQ_TRANSFORM_SIZE))


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
