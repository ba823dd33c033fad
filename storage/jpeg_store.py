"""JPEG: one JPEG file per image, labels in an index file beside them: the png store's layout with lossy files.

``000000000.jpg``, ``000000001.jpg``, ... and ``index.bin`` (its own 16-byte magic, then per image
the int64 label and whether the image had a channel axis of 1, which JPEG stores as grey). As in
png, the index is the commit record: it is renamed over the old one only after the JPEGs of an
append are on disk, and a JPEG without an index record (left by an interrupted append) is ignored
and later overwritten (`storage.png_store.ImageFileStore`).

The files are baseline JPEGs from libjpeg-turbo through simplejpeg, colour without chroma
subsampling; ``quality`` (1-100, default 90) sets new files' quantisation. Images come back
within the codec's ``min_psnr`` (`storage.codecs.Jpeg`), not bit-exact. Before a file is decoded,
its header must state no more pixels than its bytes can hold. JPEG has no checksum: a changed
byte may come back as changed pixels.

An encoded append (``append(files, labels, encoded=True)``) keeps the user's JPEG files as they are, in whatever
chroma subsampling and quality they were written (``quality`` does not apply): sequential JPEGs in grey or YCbCr,
which is what this codec decodes. Those images come back exactly as simplejpeg decodes the files.

Appends and reads go as in png: one write per new file, one read per file, and ``threads`` workers (simplejpeg
releases the GIL while it encodes and decodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import simplejpeg  # noqa: F401 - imported so that the backend is listed only where its library imports

from storage._base import Options
from storage.codecs import Jpeg
from storage.png_store import THREADS, ImageFileStore, check_threads


@dataclass(frozen=True)
class JpegOptions(Options):
    """`quality`: libjpeg's quality for new JPEG files, 1-100 (higher: larger files, closer images); `threads`:
    workers per append or read (1: none), as in png."""

    quality: int = 90
    threads: int = THREADS

    def __post_init__(self) -> None:
        Jpeg(self.quality)  # checks the quality
        check_threads(self.threads)

    @property
    def codec(self) -> Jpeg:
        return Jpeg(self.quality)


class JpegStore(ImageFileStore):
    name = "jpeg"
    Options = JpegOptions
    magic = b"imagestore-jpg\x00\x01"  # 16 bytes, like png's
    suffix = ".jpg"
