from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image, ImageFilter
from skimage import data

from bench.faces import sample_photos
from inference.align import AlignedFace, align_face, ffhq_quad, paste_back
from inference.faces import DlibBackend, FaceDetector
from inference.images import decode_image
from inference.settings import LimitsSettings


def synthetic(
    eye_left: tuple[float, float],
    eye_right: tuple[float, float],
    mouth_left: tuple[float, float],
    mouth_right: tuple[float, float],
) -> np.ndarray:
    """68 landmarks whose eye rings average to the given centres; the rest is never read."""
    ring = 3.0 * np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1)
    lm = np.full((68, 2), np.nan)
    lm[36:42] = np.array(eye_left) + ring
    lm[42:48] = np.array(eye_right) + ring
    lm[48], lm[54] = mouth_left, mouth_right
    return lm


def ffhq_reference(photo: Image.Image, lm: np.ndarray, size: int) -> Image.Image:
    """The FFHQ data-set script, literally: whole-photo shrink, full padding and blur, a warp to
    4096 px in 8 bits, a Lanczos reduction."""
    render = 4096
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2
    img = photo
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0))
    crop += (min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = np.maximum([-lo[0] + border, -lo[1] + border, hi[0] - img.size[0] + border,
                      hi[1] - img.size[1] + border], 0)  # fmt: skip
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
            1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(
            mask * 3.0 + 1.0, 0.0, 1.0
        )
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]
    img = img.transform(
        (render, render), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BILINEAR
    )
    return img.resize((size, size), Image.Resampling.LANCZOS) if size < render else img


def textured(width: int, height: int) -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    ("landmarks", "quad"),
    [
        # Eye-to-eye decides the size (2.0 * 60 < 1.8 * 70 does not hold: 126 wins).
        (
            synthetic((100, 100), (160, 100), (110, 170), (150, 170)),
            [(4, -19), (4, 233), (256, 233), (256, -19)],
        ),
        # Eye-to-mouth decides it: max(2.0 * 20, 1.8 * 50) = 90, c = (110, 105).
        (
            synthetic((100, 100), (120, 100), (100, 150), (120, 150)),
            [(20, 15), (20, 195), (200, 195), (200, 15)],
        ),
    ],
)
def test_quad_by_hand(landmarks: np.ndarray, quad: list[tuple[int, int]]) -> None:
    assert np.allclose(ffhq_quad(landmarks), quad)


def test_quad_of_a_tilted_mouth_by_hand() -> None:
    # eye_to_eye (40, 0), eye_to_mouth (10, 40): x along (80, -10), |x| = max(80, 1.8 * 41.2) = 80.
    quad = ffhq_quad(synthetic((0, 0), (40, 0), (10, 40), (50, 40)))
    x = 80 * np.array([8, -1]) / math.sqrt(65)
    y = 80 * np.array([1, 8]) / math.sqrt(65)
    c = np.array([21, 4])
    assert np.allclose(quad, [c - x - y, c - x + y, c + x + y, c + x - y])


@pytest.mark.parametrize("angle", [30.0, 90.0, -135.0])
def test_quad_follows_rotation_scale_and_shift(angle: float) -> None:
    landmarks = synthetic((100, 100), (160, 100), (110, 170), (150, 170))
    t = math.radians(angle)
    turn = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    moved = 2.5 * landmarks @ turn.T + [40, -7]
    assert np.allclose(ffhq_quad(moved), 2.5 * ffhq_quad(landmarks) @ turn.T + [40, -7])


CASES = {
    # A face well inside the photo: crop only.
    "inside": ((600, 500), synthetic((260, 220), (330, 222), (270, 300), (322, 301)), 128),
    # Past the top-left corner: reflect padding, blur and median fill.
    "corner": ((420, 380), synthetic((40, 30), (105, 40), (45, 110), (95, 118)), 128),
    # Far larger than the output: the whole photo shrinks by 2, odd sizes round unevenly.
    "shrink": ((1001, 999), synthetic((420, 400), (560, 404), (440, 560), (545, 563)), 96),
    # Large and past the right edge: padding whose blur goes through block averages.
    "wide blur": ((900, 800), synthetic((650, 350), (820, 350), (670, 540), (800, 540)), 256),
}


def assert_like_the_script(ours: Image.Image, theirs: Image.Image, largest: float = 3) -> None:
    """The bar for one resampling against the script's four: half a grey level on average."""
    difference = np.abs(np.asarray(ours, float) - np.asarray(theirs, float))
    assert difference.mean() <= 0.5
    assert difference.max() <= largest


@pytest.mark.parametrize("case", CASES)
def test_alignment_matches_the_ffhq_script(case: str) -> None:
    """Framing, padding and shrink, judged on photos with nothing finer than an output pixel
    (where one resampling and the script's four must agree whatever their filters)."""
    (width, height), landmarks, size = CASES[case]
    quad = ffhq_quad(landmarks)
    photo_per_pixel = float(np.hypot(*(quad[3] - quad[0]))) / size
    photo = textured(width, height).filter(ImageFilter.GaussianBlur(photo_per_pixel))
    ours = align_face(photo, landmarks, size).image
    assert_like_the_script(ours, ffhq_reference(photo, landmarks.copy(), size))


def test_sharp_photo_reduced_stays_near_the_ffhq_script() -> None:
    """Detail at the output's pixel size aliases a little differently through one resampling
    than through the script's 4096 px warp: about a grey level on average (2.2 without the
    antialiasing prefilter)."""
    (width, height), landmarks, size = CASES["inside"]
    photo = textured(width, height)
    ours = np.asarray(align_face(photo, landmarks, size).image, float)
    theirs = np.asarray(ffhq_reference(photo, landmarks.copy(), size), float)
    assert np.abs(ours - theirs).mean() < 1.6


@pytest.fixture(scope="module")
def bench_photos() -> dict[str, tuple[Image.Image, list[np.ndarray]]]:
    """`toonify bench faces`' photos, decoded, with the landmarks of their faces."""
    detector = FaceDetector(DlibBackend(), max_faces=4, min_size=64)
    decoded = {}
    for name, encoded in sample_photos().items():
        photo = decode_image(encoded, LimitsSettings())
        decoded[name] = (photo, [face.landmarks for face in detector.detect(photo).faces])
    return decoded


@pytest.mark.parametrize(
    ("name", "face", "size", "largest"),
    [
        ("phone.jpg", 0, 1024, 3),
        # The padding path, and the script's shrink (by 2 at 512 px).
        ("selfie.jpg", 0, 512, 3),
        ("two-faces.jpg", 1, 1024, 3),
        ("phone.jpg", 0, 256, 4),
        # The 512 px original, sharp and enlarged six times: the script's 4096 px warp and
        # Lanczos reduction round its edges by up to a level more than one bilinear sampling
        # (6 of 3.1 M values differ by 4).
        ("astronaut.jpg", 0, 1024, 4),
    ],
)
def test_bench_photos_align_as_the_ffhq_script_does(
    bench_photos: dict[str, tuple[Image.Image, list[np.ndarray]]],
    name: str,
    face: int,
    size: int,
    largest: float,
) -> None:
    photo, landmarks = bench_photos[name]
    ours = align_face(photo, landmarks[face], size).image
    assert_like_the_script(ours, ffhq_reference(photo, landmarks[face].copy(), size), largest)


def test_padding_is_filled_not_black() -> None:
    (width, height), landmarks, size = CASES["corner"]
    crop = np.asarray(align_face(textured(width, height), landmarks, size).image)
    assert crop[:8, :8].min() > 20  # the quad's corner lies outside the photo


@pytest.mark.parametrize("size", [512, 48])
def test_quad_maps_crop_pixels_to_photo_pixels(size: int) -> None:
    """On a photo whose red and green are its x and y, the crop's colours give its geometry.

    At 48 px the script's shrink is by 4, where its quad / shrink is off by 1.5 photo pixels.
    Alignment rounds down as the script's 8-bit warp does, so the photo's negative is aligned
    too and the two readings averaged; the slope avoids a staircase in step with the shrink.
    One grey level is 4.2 photo pixels here: at 48 px the 8-bit reduced copy (rounded twice)
    leaves each reading up to ~1.5 levels off, a bit over half an output pixel.
    """
    slope = 0.237
    ys, xs = np.mgrid[:1000, :1000]
    ramp = np.rint(np.stack([xs * slope, ys * slope, np.full_like(xs, 128.0)], axis=-1))
    landmarks = synthetic((430, 440), (540, 450), (445, 570), (530, 575))
    aligned = align_face(Image.fromarray(ramp.astype(np.uint8)), landmarks, size)
    negative = align_face(Image.fromarray((255 - ramp).astype(np.uint8)), landmarks, size)
    rows, cols = np.mgrid[:size, :size]
    where = aligned.to_photo(np.stack([cols.ravel(), rows.ravel()], axis=1))
    colours = np.asarray(aligned.image, float) + 255 - np.asarray(negative.image, float)
    seen = colours[..., :2].reshape(-1, 2) / (2 * slope)
    error = seen - where
    assert np.abs(error.mean(axis=0)).max() < 0.15
    assert np.abs(error).max() < 7


def test_crop_and_photo_coordinates_are_inverse() -> None:
    face = AlignedFace(
        Image.new("RGB", (256, 256)), np.array([[4, -19], [4, 233], [256, 233], [256, -19]])
    )
    corners = np.array([[-0.5, -0.5], [-0.5, 255.5], [255.5, 255.5], [255.5, -0.5]])
    assert np.allclose(face.to_photo(corners), face.quad)
    points = np.array([[10.0, 20.0], [130.5, 7.25]])
    assert np.allclose(face.to_crop(face.to_photo(points)), points)


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[Image.Image, np.ndarray]:
    photo = Image.fromarray(data.astronaut())
    faces = FaceDetector(DlibBackend(), max_faces=1, min_size=64).detect(photo).faces
    return photo, faces[0].landmarks


def inside(aligned: AlignedFace, lo: float, hi: float, shape: tuple[int, int]) -> np.ndarray:
    """Photo pixels whose centres fall in [lo, hi] of the crop square, per axis (fractions)."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    local = (aligned.to_crop(np.stack([xs.ravel(), ys.ravel()], 1)) + 0.5) / aligned.image.width
    return ((local >= lo) & (local <= hi)).all(axis=1).reshape(shape)


def test_pasting_the_aligned_crop_back_gives_the_photo(
    astronaut_face: tuple[Image.Image, np.ndarray],
) -> None:
    photo, landmarks = astronaut_face
    aligned = align_face(photo, landmarks, 512)
    pasted = np.asarray(paste_back(photo, [(aligned.image, aligned.quad)]), float)
    original = np.asarray(photo, float)
    core = inside(aligned, 0.1, 0.9, original.shape[:2])
    touched = inside(aligned, 0.0, 1.0, original.shape[:2])
    assert core.sum() > 15_000
    # Resampling there and back costs ~2.5 levels; a quarter-pixel misplacement costs ~4.
    assert np.abs(pasted - original)[core].mean() < 3.0
    assert np.array_equal(pasted[~touched], original[~touched])
    # Smaller or larger generated faces land in the same place.
    for size, tolerance in ((128, 4.5), (1024, 3.0)):
        other = aligned.image.resize((size, size), Image.Resampling.LANCZOS)
        again = np.asarray(paste_back(photo, [(other, aligned.quad)]), float)
        assert np.abs(again - original)[core].mean() < tolerance


def test_several_faces_are_pasted_with_feathered_edges() -> None:
    photo = textured(600, 400)
    first = align_face(photo, synthetic((120, 150), (170, 152), (125, 210), (166, 211)), 256)
    second = align_face(photo, synthetic((420, 180), (470, 170), (430, 240), (478, 232)), 64)
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (1024, 1024), (0, 0, 255))
    result = np.asarray(paste_back(photo, [(red, first.quad), (blue, second.quad)]))
    original = np.asarray(photo)
    shape = original.shape[:2]
    for face, colour in ((first, (255, 0, 0)), (second, (0, 0, 255))):
        assert (result[inside(face, 0.12, 0.88, shape)] == colour).all()
        ring = inside(face, 0.03, 0.97, shape) & ~inside(face, 0.07, 0.93, shape)
        blend = np.abs(result[ring].astype(int) - colour).max(axis=1)
        assert (blend > 0).all() and (result[ring] != original[ring]).any(axis=1).all()
    untouched = ~(inside(first, 0.0, 1.0, shape) | inside(second, 0.0, 1.0, shape))
    assert np.array_equal(result[untouched], original[untouched])
    assert Image.fromarray(result).size == photo.size
