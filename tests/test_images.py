from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bots import texts
from inference.images import (
    MAX_JPEG_SCANS,
    ImageError,
    ImageProblem,
    decode_image,
    encode_jpeg,
    jpeg_scans,
)
from inference.settings import LimitsSettings

LIMITS = LimitsSettings()
RED = (200, 30, 40)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def scene(mode: str = "RGB") -> Image.Image:
    """A red picture with a blue left half, so orientation and colour can be checked."""
    image = Image.new("RGB", (64, 48), RED)
    image.paste((20, 40, 220), (0, 0, 32, 48))
    return image.convert(mode)


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"quality": 95}),
        ("HEIF", {"quality": 95}),
        ("AVIF", {"quality": 95}),
        ("MPO", {"quality": 95}),
        ("GIF", {}),
    ],
)
def test_accepted_formats_decode_to_rgb(fmt: str, options: dict[str, object]) -> None:
    image = decode_image(encode(scene(), fmt, **options), LIMITS)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert close(image.getpixel((50, 20)), RED)
    assert close(image.getpixel((10, 20)), (20, 40, 220))


def test_exif_orientation_is_applied() -> None:
    stored = scene().transpose(Image.Transpose.ROTATE_90)  # what a phone held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_image(encode(stored, "JPEG", quality=95, exif=exif), LIMITS)
    assert image.size == (64, 48)
    assert close(image.getpixel((10, 20)), (20, 40, 220))


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = decode_image(encode(scene(mode), fmt), LIMITS)
    assert image.mode == "RGB"
    expected = scene(mode).convert("RGB").getpixel((50, 20))
    assert isinstance(expected, tuple)
    assert close(image.getpixel((50, 20)), expected)
    if mode != "1":
        assert not close(image.getpixel((10, 20)), image.getpixel((50, 20)))


def test_sixteen_bit_grey_keeps_its_range() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    image = decode_image(encode(Image.fromarray(ramp), "PNG"), LIMITS)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, -1].tolist() == [255, 255, 255]
    assert 120 <= pixels[0, 32, 0] <= 135


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_flattened_on_white(mode: str) -> None:
    rgba = scene("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 48))  # fully transparent black strip
    source = rgba.convert(mode) if mode != "P" else rgba.quantize(8)
    if mode == "P":
        transparent = source.getpixel((0, 0))
        data = encode(source, "PNG", transparency=transparent)
    else:
        data = encode(source, "PNG")
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((50, 20)) != (255, 255, 255)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, (0, 200, 0), (0, 0, 200))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data, LIMITS)
    assert close(image.getpixel((16, 16)), RED)


def test_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, (0, 200, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert close(decode_image(data, LIMITS).getpixel((16, 16)), RED)


def progressive_jpeg(image: Image.Image, repeat_last_scan: int = 0) -> bytes:
    """A progressive JPEG; `repeat_last_scan` more copies of its last scan make it the hostile
    file that keeps a decoder busy for minutes (every scan is a pass over the whole picture)."""
    data = encode(image, "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * repeat_last_scan + data[end:]


def test_progressive_jpeg_counts_its_scans_and_decodes() -> None:
    data = progressive_jpeg(scene())
    assert 2 < jpeg_scans(data, MAX_JPEG_SCANS) <= 12
    assert close(decode_image(data, LIMITS).getpixel((50, 20)), RED)


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    hostile = progressive_jpeg(Image.new("L", (3000, 3000), 128), repeat_last_scan=3000)
    assert len(hostile) < 1_000_000
    assert jpeg_scans(hostile, MAX_JPEG_SCANS) == MAX_JPEG_SCANS + 1
    with pytest.raises(ImageError) as info:
        decode_image(hostile, LIMITS)
    assert info.value.problem is ImageProblem.TOO_COMPLEX


def test_an_mpo_counts_the_scans_of_its_first_picture_only() -> None:
    frames = [scene()] * (MAX_JPEG_SCANS + 5)
    mpo = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(mpo)).n_frames == len(frames)
    assert jpeg_scans(mpo, MAX_JPEG_SCANS) == 1
    assert close(decode_image(mpo, LIMITS).getpixel((50, 20)), RED)


def jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), "JPEG", quality=90)


@pytest.mark.parametrize(
    ("data", "limits", "problem", "words"),
    [
        (b"", LIMITS, ImageProblem.EMPTY, "empty"),
        (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), LIMITS,
         ImageProblem.NOT_AN_IMAGE, "not an image"),
        (b"Hello, this is a text file.\nNot a selfie.\n" * 20, LIMITS,
         ImageProblem.NOT_AN_IMAGE, "not an image"),
        (jpeg()[:3000], LIMITS, ImageProblem.DAMAGED, "damaged"),
        (encode(scene(), "PNG")[:-40], LIMITS, ImageProblem.DAMAGED, "damaged"),
        (jpeg(), LimitsSettings(max_bytes=1000), ImageProblem.TOO_MANY_BYTES, "too large"),
        (encode(scene(), "PNG"), LimitsSettings(max_pixels=3000), ImageProblem.TOO_MANY_PIXELS,
         "64x48"),
        # Past our limit, past Pillow's warning (89 MP) and past its hard limit (179 MP).
        (png_claiming(8000, 8000), LIMITS, ImageProblem.TOO_MANY_PIXELS, "limit is 40 MP"),
        (png_claiming(10000, 10000), LIMITS, ImageProblem.TOO_MANY_PIXELS, "too large"),
        (png_claiming(100000, 100000), LIMITS, ImageProblem.TOO_MANY_PIXELS, "too many pixels"),
        (encode(scene(), "BMP"), LIMITS, ImageProblem.UNSUPPORTED_FORMAT, "BMP"),
        (encode(scene(), "TIFF"), LIMITS, ImageProblem.UNSUPPORTED_FORMAT, "TIFF"),
    ],
    ids=[
        "empty", "random", "text", "truncated-jpeg", "truncated-png", "bytes", "pixels",
        "bomb-64mp", "bomb-100mp", "bomb-10gp", "bmp", "tiff",
    ],
)  # fmt: skip
def test_bad_input_gets_a_typed_reason_that_texts_put_in_words(
    data: bytes, limits: LimitsSettings, problem: ImageProblem, words: str
) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data, limits)
    assert info.value.problem is problem
    assert words in texts.image_problem(info.value)
    again = pickle.loads(pickle.dumps(info.value))  # as it crosses a prepare process's pipe
    assert (again.problem, again.facts) == (info.value.problem, info.value.facts)


def test_encode_jpeg_round_trips_and_drops_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    source = decode_image(encode(scene(), "JPEG", exif=exif), LIMITS)
    data = encode_jpeg(source, quality=85)
    again = Image.open(io.BytesIO(data))
    assert again.format == "JPEG"
    assert "exif" not in again.info
    assert close(again.convert("RGB").getpixel((50, 20)), RED)
    assert encode_jpeg(np.asarray(source))[:2] == b"\xff\xd8"
