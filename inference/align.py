"""FFHQ alignment of a face from its 68 landmarks, and the way back into the photo.

The steps and constants are those of the script that made the FFHQ data set (quad from eyes and
mouth, shrink, crop with border, reflect-pad with blur and median fill, quad transform, Lanczos
resize), so the generator sees faces framed as in training. Three things differ, for speed:

- the shrink resizes only the region around the face (Pillow's `box`), which gives exactly the
  pixels that resizing the whole photo and then cropping gives;
- the blur of the padding (sigma = 2 % of the face, hundreds of taps on big faces) runs on a
  block-averaged copy and is interpolated back: the blur is so wide that this changes it by
  less than 0.2 grey levels, where the direct filter takes seconds;
- the quad transform renders at 3x the output size (at most 4096) instead of always 4096, and
  the Lanczos resize brings it down: the result is within one grey level of the original's
  (pass `transform_size=4096` for the original's exact numbers; see tests/test_align.py), and
  at 256 px it is some 25 times faster.

Coordinates are photo pixels with pixel centres at integers, as landmark detectors give them.
A quad lists the crop's outer corners: top-left, bottom-left, bottom-right, top-right.
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
# Rendering the quad at 3x the output size, then Lanczos, matches FFHQ's 4096 within one grey level.
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
        region = _pad_blend(np.asarray(region), pad, qsize)
        quad = quad + pad[:2]

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


def _pad_blend(image: np.ndarray, pad: np.ndarray, qsize: float) -> Image.Image:
    """Reflect-pad, then fade the padding towards a blur and the median colour (FFHQ step 6)."""
    left, top, right, bottom = (int(p) for p in pad)
    padded = np.pad(
        image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect"
    )
    h, w, _ = padded.shape
    y, x = np.ogrid[:h, :w]
    x, y = x.astype(np.float32), y.astype(np.float32)
    mask_x = 1.0 - np.minimum(x / left, (w - 1 - x) / right)
    mask_y = 1.0 - np.minimum(y / top, (h - 1 - y) / bottom)
    mask = np.maximum(mask_x, mask_y)[..., None]
    blurred = _wide_blur(padded, qsize * 0.02)
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(padded), 0, 255).astype(np.uint8), "RGB")


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's Gaussian (mode reflect) over H and W, through block averages when sigma is wide.

    Block-averaging by k and bilinear interpolation back add variances of about (k^2 - 1) / 12
    and k^2 / 6; the Gaussian on the blocks supplies the rest, so the total stays sigma^2. The
    image is first mirrored by the filter's reach, as scipy's reflect mode does, so that the
    blocks' own edges never matter.
    """
    block = math.floor(sigma / _BLUR_SIGMA_PER_BLOCK)
    if block < 2:
        return ndimage.gaussian_filter(image, [sigma, sigma, 0])
    h, w, _ = image.shape
    margin = block * math.ceil((4 * sigma + block) / block)
    extended = np.pad(
        image,
        ((margin, margin - h % block), (margin, margin - w % block), (0, 0)),
        mode="symmetric",
    )
    blocks = extended.reshape(extended.shape[0] // block, block, -1, block, 3).mean(axis=(1, 3))
    rest = sigma**2 - (block**2 - 1) / 12 - block**2 / 6
    small = ndimage.gaussian_filter(blocks, [math.sqrt(rest) / block] * 2 + [0])
    return _upsample(small, block)[margin : margin + h, margin : margin + w]


def _upsample(small: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer factor, block centres on block centres."""
    out = small
    for axis in (0, 1):
        n = out.shape[axis]
        pos = (np.arange(n * factor) + 0.5) / factor - 0.5
        lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
        hi = np.minimum(lo + 1, n - 1)
        t = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        t = t.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - t) + np.take(out, hi, axis=axis) * t
    return out


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
