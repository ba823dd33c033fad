"""The codecs on their own: each decodes what it encoded and reports a stored layout that does not fit."""

from __future__ import annotations

import io
import re
import zlib

import numpy as np
import pytest
from PIL import Image

import storage
from storage import codecs

IMAGE = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_png_decoding_checks_the_recorded_layout():
    png = codecs.get("png")
    encoded = png.encode(IMAGE)
    assert np.array_equal(png.decode(encoded, (16, 16, 3), np.dtype("u1")), IMAGE)
    with pytest.raises(storage.DamagedStoreError, match="not uint8 \\(16, 16, 4\\)"):
        png.decode(encoded, (16, 16, 4), np.dtype("u1"))


def test_png_keeps_a_channel_axis_of_one_as_grey():
    png = codecs.get("png")
    grey = IMAGE[..., :1]
    assert png.decode(png.encode(grey)).shape == (16, 16)
    assert np.array_equal(png.decode(png.encode(grey), (16, 16, 1), np.dtype("u1")), grey)


def test_raw_decoding_checks_the_byte_count():
    encoded = codecs.RAW.encode(IMAGE)
    assert np.array_equal(codecs.RAW.decode(encoded, (16, 16, 3), np.dtype("u1")), IMAGE)
    with pytest.raises(storage.DamagedStoreError, match="its recorded layout needs 1024"):
        codecs.RAW.decode(encoded, (16, 16, 4), np.dtype("u1"))


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((16, 16, 3), "u1"), ((16, 16, 4), "u1"), ((16, 16), "u1"), ((16, 16, 1), "u1"), ((16, 16), "u2")],
    ids=["rgb", "rgba", "grey", "grey-axis", "grey16"],
)
def test_png_libraries_read_each_others_files_bit_exactly(shape, dtype):
    image = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    for writer in codecs.PNG_LIBRARIES:
        encoded = codecs.Png(1, writer).encode(image)
        for reader in codecs.PNG_LIBRARIES:
            assert np.array_equal(codecs.Png(1, reader).decode(encoded, shape, np.dtype(dtype)), image), (
                writer,
                reader,
            )


@pytest.mark.parametrize("library", codecs.PNG_LIBRARIES)
def test_png_whose_header_claims_more_pixels_than_its_bytes_can_hold_is_damage(library):
    encoded = bytearray(codecs.Png(1, library).encode(IMAGE))
    encoded[16:24] = (60_000).to_bytes(4, "big") * 2  # IHDR width and height; its CRC is not even reached
    with pytest.raises(storage.DamagedStoreError, match="claims 60000x60000 pixels"):
        codecs.Png(1, library).decode(bytes(encoded))
    with pytest.raises(storage.DamagedStoreError, match="no PNG header"):
        codecs.Png(1, library).decode(bytes(encoded[:20]), (16, 16, 3), np.dtype("u1"))


def test_an_unknown_png_library_is_refused():
    with pytest.raises(ValueError, match="library must be one of imagecodecs, pillow"):
        codecs.Png(1, "libspng")


@pytest.mark.parametrize("level", [-1, 10, 1.5, "9"])
def test_png_level_out_of_range_is_refused(level):
    with pytest.raises(ValueError, match="compress_level must be an int from 0 to 9"):
        codecs.Png(level)


@pytest.mark.parametrize("strategy", codecs.PNG_STRATEGIES)
@pytest.mark.parametrize("row_filter", codecs.PNG_FILTERS)
def test_every_png_encoder_setting_writes_a_standard_png_that_pillow_reads_bit_exactly(strategy, row_filter):
    grey16 = np.random.default_rng(7).integers(0, 65536, (16, 16), dtype=np.uint16)
    for image in (IMAGE, np.dstack([IMAGE, IMAGE[..., :1]]), IMAGE[..., 0], grey16):
        encoded = codecs.Png(1, "imagecodecs", strategy, row_filter).encode(image)
        with Image.open(io.BytesIO(encoded), formats=["PNG"]) as opened:
            decoded = np.asarray(opened)
        assert np.array_equal(decoded.astype(image.dtype), image), (strategy, row_filter, image.shape, image.dtype)


def test_png_settings_change_the_file():
    gradient = np.add.outer(np.arange(16), np.arange(16))[..., None] * [3, 5, 7]  # compressible, unlike IMAGE
    image = (gradient + np.random.default_rng(4).integers(0, 4, (16, 16, 3))).astype(np.uint8)
    files = {codecs.Png(1, "imagecodecs", strategy, "paeth").encode(image) for strategy in ("huffman", "fixed")}
    files |= {codecs.Png(1, "imagecodecs", "default", row_filter).encode(image) for row_filter in ("none", "up")}
    files |= {codecs.Png(1, "pillow", strategy).encode(image) for strategy in (None, "huffman")}
    assert len(files) == 6  # each setting reaches its library, Pillow's strategy too


def test_a_png_label_names_the_settings_that_differ_from_its_librarys_defaults():
    strategy, row_filter = codecs.PNG_DEFAULTS["imagecodecs"]
    assert codecs.Png().label == "png-imagecodecs-level1"
    assert codecs.Png(1, "imagecodecs", strategy, row_filter) == codecs.Png()  # defaults spelled out: the same codec
    assert codecs.Png(9, "imagecodecs", "default", "sub").label == "png-imagecodecs-level9-default-sub"
    assert codecs.Png(1, "imagecodecs", strategy, "paeth").label == "png-imagecodecs-level1-paeth"
    assert codecs.Png(6, "pillow").label == "png-pillow-level6"  # the tutorial's codec floor keeps its name
    assert codecs.Png(6, "pillow", "rle", "adaptive").label == "png-pillow-level6-rle"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "lz4"}, "strategy must be one of default, filtered, huffman, rle, fixed, got 'lz4'"),
        ({"strategy": 3}, "strategy must be one of"),
        ({"filter": "best"}, "filter must be one of none, sub, up, average, paeth, adaptive, got 'best'"),
        ({"library": "pillow", "filter": "sub"}, "Pillow picks each row's PNG filter itself"),
    ],
    ids=["strategy", "strategy-number", "filter", "pillow-filter"],
)
def test_png_encoder_settings_that_cannot_apply_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        codecs.Png(**settings)


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"encoding must be one of raw, png(, jpeg)?; got 'webp'"):
        codecs.get("webp")


@pytest.mark.parametrize("codec", list(codecs.CODECS.values()), ids=lambda codec: codec.name)
def test_lossless_codecs_promise_no_psnr_bound(codec):
    assert codec.lossless == (codec.min_psnr is None)


# --- files kept as they are: what a file's header says, and which files a codec takes ----------------------------

GREY16 = np.random.default_rng(6).integers(0, 65536, (16, 16), dtype=np.uint16)
needs_jpeg = pytest.mark.skipif("jpeg" not in codecs.CODECS, reason="the jpeg codec needs simplejpeg")


def pillow(image: np.ndarray | Image.Image, file_format: str, **settings) -> bytes:
    """`image` as a file that Pillow writes."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=file_format, **settings)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "shape", "dtype"),
    [
        (IMAGE, (16, 16, 3), "u1"),
        (np.dstack([IMAGE, IMAGE[..., :1]]), (16, 16, 4), "u1"),
        (IMAGE[..., 0], (16, 16), "u1"),
        (GREY16, (16, 16), "u2"),
    ],
    ids=["rgb", "rgba", "grey", "grey16"],
)
@pytest.mark.parametrize("library", codecs.PNG_LIBRARIES)
def test_a_png_header_gives_the_layout_of_its_image(image, shape, dtype, library):
    png = codecs.Png(1, library)
    for file in (png.encode(image), pillow(image, "PNG", compress_level=9), pillow(image, "PNG", optimize=True)):
        assert png.file_layout(file) == (shape, np.dtype(dtype))
        assert np.array_equal(png.decode(file, shape, np.dtype(dtype)), image)
        assert png.encode(file) is file  # a file is kept as it is


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pillow(IMAGE, "PNG")[:30], "no PNG signature and IHDR"),
        (lambda: b"GIF89a" + bytes(40), "no PNG signature and IHDR"),
        (lambda: pillow(IMAGE, "PNG")[:-1], "ends before its IEND chunk"),
        (lambda: pillow(IMAGE, "PNG")[:-13] + pillow(IMAGE, "PNG")[-12:], "b'IDAT' chunk at byte"),  # its CRC cut
        (lambda: pillow(IMAGE[..., 0] > 128, "PNG"), "bit depth 1 and colour type 0"),
        (lambda: pillow(Image.fromarray(IMAGE).convert("P"), "PNG"), "bit depth 8 and colour type 3"),
        (lambda: pillow(IMAGE[..., :2], "PNG"), "bit depth 8 and colour type 4"),
        (lambda: pillow(IMAGE, "PNG", transparency=(1, 2, 3)), "tRNS"),
        (lambda: pillow(IMAGE[..., 0], "PNG", transparency=7), "tRNS"),
        (lambda: pillow(IMAGE, "PNG", save_all=True, append_images=[Image.fromarray(IMAGE[::-1])]), "acTL"),
    ],
    ids=[
        "cut-in-ihdr",
        "gif",
        "no-iend",
        "cut-crc",
        "one-bit",
        "palette",
        "grey-alpha",
        "rgb-trns",
        "grey-trns",
        "apng",
    ],
)
def test_png_files_that_are_broken_or_that_the_libraries_decode_differently_are_refused(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        codecs.get("png").file_layout(make())


def test_a_png_whose_chunks_are_whole_but_whose_pixels_do_not_decode_passes_the_header_but_not_decoding():
    file = bytearray(pillow(IMAGE, "PNG"))
    start = file.index(b"IDAT") + 4
    end = start + int.from_bytes(file[start - 8 : start - 4], "big")
    file[start + 2 : start + 10] = bytes(8)  # deflate data changed, its chunk's CRC made to match
    file[end : end + 4] = zlib.crc32(file[start - 4 : end]).to_bytes(4, "big")
    for library in codecs.PNG_LIBRARIES:
        png = codecs.Png(1, library)
        assert png.file_layout(bytes(file)) == ((16, 16, 3), np.dtype("u1"))
        with pytest.raises(storage.DamagedStoreError, match="cannot be decoded"):
            png.decode(bytes(file), (16, 16, 3), np.dtype("u1"))


@needs_jpeg
@pytest.mark.parametrize(
    ("image", "settings", "shape"),
    [
        (IMAGE, {"quality": 80, "subsampling": "4:2:0"}, (16, 16, 3)),
        (IMAGE, {"quality": 95, "subsampling": "4:4:4"}, (16, 16, 3)),
        (IMAGE[..., 0], {"quality": 80}, (16, 16)),
    ],
    ids=["colour-420", "colour-444", "grey"],
)
def test_a_jpeg_frame_header_gives_the_layout_of_its_image(image, settings, shape):
    jpeg = codecs.get("jpeg")
    for file in (pillow(image, "JPEG", **settings), jpeg.encode(image)):
        assert jpeg.file_layout(file) == (shape, np.dtype("u1"))
        assert jpeg.decode(file, shape, np.dtype("u1")).shape == shape
        assert jpeg.encode(file) is file


@needs_jpeg
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pillow(IMAGE, "PNG"), "no JPEG file (no start-of-image marker)"),
        (lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF", "without a frame header"),
        (lambda: pillow(IMAGE, "JPEG", progressive=True), "frame type SOF2"),
        (lambda: pillow(Image.fromarray(IMAGE).convert("CMYK"), "JPEG"), "CMYK colour space"),
        (lambda: pillow(IMAGE, "JPEG")[:400], "cut short or damaged"),
    ],
    ids=["png", "no-frame", "progressive", "cmyk", "cut"],
)
def test_jpeg_files_the_codec_does_not_decode_are_refused(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        codecs.get("jpeg").file_layout(make())


def test_raw_pixels_have_no_file_format():
    with pytest.raises(ValueError, match="the raw codec has no file format"):
        codecs.RAW.file_layout(codecs.get("png").encode(IMAGE))
