"""Minimal PNG writer/reader for 8-bit grey and RGB images (zlib + struct, no Qt, no Pillow)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (rows, cols) grey or (rows, cols, 3) RGB image."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError("expected a uint8 grey (rows, cols) or RGB (rows, cols, 3) image")
    rows, cols = img.shape[:2]
    color_type = 0 if img.ndim == 2 else 2
    raw = img.reshape(rows, -1)
    # filter type 0 (None) at the start of every scan line
    scanlines = np.hstack([np.zeros((rows, 1), np.uint8), raw]).tobytes()
    header = struct.pack(">IIBBBBB", cols, rows, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path | str, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))
    return path


def read_png(path: Path | str) -> np.ndarray:
    """Read back a PNG written by :func:`write_png` (8-bit grey/RGB, unfiltered or filtered)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"PNG chunk {kind!r} has a bad checksum")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise ValueError("PNG has no header")
    cols, rows, depth, color_type = header[:4]
    if depth != 8 or color_type not in (0, 2):
        raise ValueError("only 8-bit grey or RGB PNGs are supported")
    channels = 1 if color_type == 0 else 3
    stride = cols * channels
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(rows, stride + 1)
    out = np.zeros((rows, stride), np.int32)
    for r in range(rows):
        f, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        prev = out[r - 1] if r else np.zeros(stride, np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) % 256
        else:
            cur = np.zeros(stride, np.int32)
            for i in range(stride):
                left = cur[i - channels] if i >= channels else 0
                up = prev[i]
                ul = prev[i - channels] if i >= channels else 0
                if f == 1:
                    pred = left
                elif f == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                cur[i] = (line[i] + pred) % 256
        out[r] = cur
    img = out.astype(np.uint8)
    return img.reshape(rows, cols) if channels == 1 else img.reshape(rows, cols, 3)
