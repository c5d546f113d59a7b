"""Check a compressed frame against its DICOM header before a native decoder sees it.

JPEG, JPEG-LS and JPEG 2000 decoders (GDCM, CharLS, libjpeg, OpenJPEG) are C/C++ code
that trusts the buffer it is given: GDCM aborts the whole process when the header's
Rows × Columns disagree with the codestream (``terminate called after throwing an
instance of 'gdcm::Exception'``). The codestream declares its own size in its first
bytes (JPEG/JPEG-LS SOF segment, JPEG 2000 SIZ marker); :func:`mismatch` reads it and
says, in one line, why a frame is not handed to a decoder when the two disagree.

Pure parsing of bytes already in memory; nothing here decodes, recurses or allocates.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

JPEG, JPEG_LS, JPEG_2000 = "JPEG", "JPEG-LS", "JPEG 2000"

#: Transfer syntax UID → codestream family whose header :func:`frame_size` reads.
SYNTAX_KIND = {
    "1.2.840.10008.1.2.4.50": JPEG,  # baseline
    "1.2.840.10008.1.2.4.51": JPEG,  # extended
    "1.2.840.10008.1.2.4.57": JPEG,  # lossless
    "1.2.840.10008.1.2.4.70": JPEG,  # lossless SV1
    "1.2.840.10008.1.2.4.80": JPEG_LS,
    "1.2.840.10008.1.2.4.81": JPEG_LS,
    "1.2.840.10008.1.2.4.90": JPEG_2000,
    "1.2.840.10008.1.2.4.91": JPEG_2000,
    "1.2.840.10008.1.2.4.92": JPEG_2000,  # part 2 multi-component
    "1.2.840.10008.1.2.4.93": JPEG_2000,
    "1.2.840.10008.1.2.4.201": JPEG_2000,  # HTJ2K
    "1.2.840.10008.1.2.4.202": JPEG_2000,
    "1.2.840.10008.1.2.4.203": JPEG_2000,
}

# Start-of-frame markers: SOF0–3, 5–7, 9–11, 13–15 (JPEG) and SOF55 (JPEG-LS).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_NO_LENGTH = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RSTn: no segment length
_U16 = struct.Struct(">H")
_SIZ = struct.Struct(">HHLLLLLLLLH")  # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class FrameSize:
    """What a codestream says about itself."""

    rows: int
    columns: int
    samples: int
    precision: int  # bits per sample (the largest over the components)


def kind_of(transfer_syntax: str) -> str | None:
    return SYNTAX_KIND.get(transfer_syntax)


def frame_size(data: bytes | memoryview, kind: str) -> FrameSize | None:
    """The size a ``kind`` codestream starting at ``data[0]`` declares; None if not found in ``data``."""
    try:
        return _j2k(data) if kind == JPEG_2000 else _jpeg(data)
    except (struct.error, IndexError):
        return None


def _jpeg(data: bytes | memoryview) -> FrameSize | None:
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 2 <= n:  # marker segments in order, each skipped by its length: no recursion
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _SOF:
            precision = data[pos + 4]
            (rows,) = _U16.unpack_from(data, pos + 5)
            (columns,) = _U16.unpack_from(data, pos + 7)
            return FrameSize(rows, columns, data[pos + 9], precision)
        (length,) = _U16.unpack_from(data, pos + 2)
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k(data: bytes | memoryview) -> FrameSize | None:
    pos, n = 0, len(data)
    if bytes(data[:12]) == _JP2_SIGNATURE:  # JP2 file format around the codestream: find the jp2c box
        pos = 12
        while True:
            if pos + 8 > n:
                return None
            length = int.from_bytes(data[pos : pos + 4], "big")
            box = bytes(data[pos + 4 : pos + 8])
            header = 8
            if length == 1:
                length = int.from_bytes(data[pos + 8 : pos + 16], "big")
                header = 16
            if box == b"jp2c":
                pos += header
                break
            if length < header:
                return None
            pos += length
    if bytes(data[pos : pos + 4]) != b"\xff\x4f\xff\x51":  # SOC then SIZ, always first
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, *_tiles, csiz = _SIZ.unpack_from(data, pos + 4)
    if csiz == 0:
        return None
    ssiz = data[pos + 42 : pos + 42 + 3 * csiz : 3]
    if len(ssiz) < csiz:
        return None
    precision = max((s & 0x7F) + 1 for s in ssiz)
    return FrameSize(ysiz - yosiz, xsiz - xosiz, csiz, precision)


def mismatch(
    data: bytes | memoryview | Iterable[bytes], kind: str, rows: int, columns: int, samples: int, bits_allocated: int,
    *, complete: bool = True,
) -> str | None:
    """Why this frame must not be decoded, in one line; None when it agrees with the header.

    ``data``: the frame's bytes (or its fragments, in order). ``complete`` False: ``data`` is
    only the start of the frame, so a header not found in it is no reason to refuse.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        frags = list(data)
        found = frame_size(frags[0], kind) if frags else None
        if found is None and len(frags) > 1:
            found = frame_size(b"".join(frags), kind)
    else:
        found = frame_size(data, kind)
    if found is None:
        if not complete:
            return None
        return f"compressed image data is damaged (no {kind} frame header): not decoded"
    if not (0 < found.rows <= 0xFFFF and 0 < found.columns <= 0xFFFF):
        return (f"damaged file: the {kind} image inside declares an impossible size "
                f"({found.columns}×{found.rows} pixels); not opened")
    if (found.rows, found.columns) != (rows, columns):
        return (f"damaged file: the header says {columns}×{rows} pixels but the {kind} image inside is "
                f"{found.columns}×{found.rows}; not opened")
    if found.samples != samples:
        return (f"damaged file: the header says {samples} sample(s) per pixel but the {kind} image inside has "
                f"{found.samples}; not opened")
    if not 1 <= found.precision <= bits_allocated:
        return (f"damaged file: the {kind} image inside has {found.precision}-bit samples but the header "
                f"allocates {bits_allocated} bits; not opened")
    return None
