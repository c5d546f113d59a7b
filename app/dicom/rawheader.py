"""A fast reader for the common DICOM header: Part 10 files in little-endian syntaxes.

pydicom's reader is general and costs a few milliseconds per file, which is
most of the time to open a 300-slice series. This reader walks the element
stream with ``struct`` once, up to the pixel data, and hands pydicom a
:class:`~pydicom.dataset.Dataset` of *raw* elements (converted lazily, only
those we ask for). Anything unusual (no preamble, big endian, deflate, odd
lengths, a header that does not end in pixel data) returns None and the caller
falls back to pydicom's reader.

A file that must not be read further (not a regular file, a header past
``limits.MAX_HEADER_BYTES``, sequences nested past ``limits.MAX_SEQUENCE_DEPTH``, zero bytes
where elements should be) raises :class:`Refused` with the one-line reason instead: falling
back to pydicom would only hang or recurse on it. Nothing here recurses past that depth.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag

from app.dicom.limits import MAX_HEADER_BYTES, MAX_SEQUENCE_DEPTH

_LONG = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_PIXEL = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_VRS = {v.encode(): v for v in (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
).split()}
_EXPLICIT_HDR = struct.Struct("<HH2sH")
_IMPLICIT_HDR = struct.Struct("<HHL")
_U32 = struct.Struct("<L")
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT = "1.2.840.10008.1.2"
_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
_HEAD = 16384
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation on raw descriptors
#: Opening a named pipe must not block: the descriptor is checked before anything is read.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Tag (0000,0000) ends the element loops like pixel data does (no extra test per element);
#: with length 0 it means zero bytes where the header should be.
_ZERO = "(0000,0000)"
_ZERO_REASON = "file is filled with zero bytes where the image header should be: not an image"


class _Short(Exception):
    """The buffer ended before the structure did."""


class Refused(Exception):
    """This file must not be read any further; ``str(exc)`` is the reason, one line."""


def special_file_reason(mode: int) -> str | None:
    """Why a file of ``st_mode`` ``mode`` is never opened (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    kind = (
        "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a folder" if stat.S_ISDIR(mode)
        else "a special file"
    )
    return f"skipped: {kind}, not a file (never opened)"


def printable(text: str, limit: int = 64) -> str:
    """File-controlled ``text`` fit for a one-line reason: control characters replaced, cut at ``limit``."""
    clean = "".join(c if c.isprintable() else "?" for c in str(text))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _too_deep() -> Refused:
    return Refused(f"sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep: damaged file, not opened")


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _skip_undefined(buf: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Position just after the sequence delimiter of an undefined-length value starting at ``pos``.

    ``depth``: sequences around this one; past ``MAX_SEQUENCE_DEPTH`` the file is refused.
    """
    if depth >= MAX_SEQUENCE_DEPTH:
        raise _too_deep()
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Short
        group, elem, length = struct.unpack_from("<HHL", buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise ValueError("unexpected element inside a sequence")
        if length == 0xFFFFFFFF:
            pos = _skip_dataset(buf, pos, implicit, depth)
        else:
            pos += length


def _skip_dataset(buf: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Skip an undefined-length item's data set; position after its item delimiter."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Short
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            return pos + 8
        pos, _vr, _length, _start = _element_at(buf, pos, implicit, tag, depth + 1)


def _element_at(buf: bytes, pos: int, implicit: bool, tag: int, depth: int = 0) -> tuple[int, str, int, int]:
    """(end position, VR, length, value start) of the element at ``pos``."""
    n = len(buf)
    if implicit:
        (length,) = struct.unpack_from("<L", buf, pos + 4)
        if not tag and not length:
            raise Refused(_ZERO_REASON)
        vr = _vr_of(tag)
        start = pos + 8
    else:
        vr_bytes = buf[pos + 4 : pos + 6]
        if vr_bytes in _LONG:
            if pos + 12 > n:
                raise _Short
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            start = pos + 8
        vr = _VRS.get(vr_bytes)
        if vr is None:
            if tag == 0 and length == 0:
                raise Refused(_ZERO_REASON)
            raise ValueError("bad VR")
    if length == 0xFFFFFFFF:
        if vr not in ("SQ", "UN", "OB", "OW") and not implicit:
            raise ValueError("undefined length on a non-sequence")
        end = _skip_undefined(buf, start, implicit, depth)
        return end, "SQ" if vr in ("UN", "OB", "OW") and implicit else vr, length, start
    end = start + length
    if end > n:
        raise _Short
    return end, vr, length, start


def read_fast(
    path: Path, keep: frozenset[int] | None = None, quick: Mapping[int, tuple[str, str]] | None = None
) -> tuple[Dataset | Values, tuple[str, int, int] | None] | None:
    """(raw data set with file meta, (pixel keyword, value offset, length) or None), or None to fall back.

    ``keep`` limits the data set to those top-level tags (all of them when None).
    ``quick`` (tag → (keyword, VR), from :func:`quick_spec`) first tries the quick
    path: when every wanted element is a plain string or US value and pixel data
    follows the header, the answer is a :class:`Values` (keyword → decoded
    value, with ``file_meta`` and the file's ``size``) instead of a data set.
    The file is opened and read once either way.

    Raises :class:`Refused` for a file that is not to be read (see the module docstring).
    """
    fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        special = special_file_reason(st.st_mode)
        if special is not None:
            raise Refused(special)
        size = st.st_size
        buf = os.read(fd, _HEAD)
        complete = len(buf) < _HEAD or len(buf) >= size
        while True:
            try:
                if quick is not None:
                    try:
                        found = _quick(buf, complete, quick)
                    except _Abort:
                        found = None
                        quick = None  # something unusual: the general parse below decides
                    if found is not None:
                        found[0].size = size
                        return found
                return _parse(buf, complete, keep)
            except _Short:
                if complete:
                    return None  # ends inside the header: pydicom will say how
                if len(buf) >= MAX_HEADER_BYTES:
                    raise Refused(f"image header is larger than {MAX_HEADER_BYTES // 1024**2} MiB: "
                                  "damaged file, not opened") from None
                want = min(len(buf) * 3, MAX_HEADER_BYTES - len(buf))
                more = os.read(fd, want)
                complete = len(more) < want
                buf += more
            except (ValueError, struct.error, UnicodeDecodeError, KeyError):
                return None
    finally:
        os.close(fd)


def file_meta_syntax(buf: bytes) -> tuple[str, int] | None:
    """(transfer syntax UID, offset of the data set) from a Part 10 file's first bytes, or None."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    try:
        while pos + 8 <= len(buf):
            group, elem = struct.unpack_from("<HH", buf, pos)
            if group != 0x0002:
                return (ts, pos) if ts else None
            end, _vr, _length, start = _element_at(buf, pos, False, group << 16 | elem)
            if elem == 0x0010:
                ts = buf[start:end].decode("ascii", "replace").rstrip("\x00 ")
            pos = end
    except (_Short, ValueError, struct.error, Refused):
        return None
    return None


class Values(dict):
    """Top-level values of the quick path, keyword → value decoded as ``header._value`` decodes raw
    elements (strings split at backslashes, US as int), plus ``file_meta`` (another Values) and the
    file's ``size`` in bytes."""

    __slots__ = ("file_meta", "size")


class _Abort(Exception):
    """The quick path does not cover this file; the general reader takes over."""


def _swap(tag: int) -> int:
    """The tag as one little-endian uint32 read at the element start: element << 16 | group."""
    return (tag & 0xFFFF) << 16 | tag >> 16


def quick_spec(tags: Mapping[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """The quick path's lookup table for ``tags`` (tag → (keyword, dictionary VR))."""
    return {_swap(t): kv for t, kv in tags.items()}


_STRING_VRS = frozenset(v.encode() for v in "AE AS CS DA DS DT IS LO SH TM UI LT ST PN".split())
_STOP = {**_PIXEL, 0: _ZERO}  # where the element loops stop: pixel data, or tag (0000,0000)
_STOP_KEYS = {_swap(t): kw for t, kw in _STOP.items()}
_META_TS, _META_END = _swap(0x00020010), 0x0002
_SQ_KEYS = {_swap(_ITEM), _swap(_ITEM_END), _swap(_SEQ_END)}
_QUICK_CHARSETS = {None: "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_HEADER_LEN = {vr: (12 if vr in _LONG else 8) for vr in _VRS}
_E = struct.Struct("<L2sH")
_I = struct.Struct("<LL")
_H = struct.Struct("<H")


def _text_value(raw: bytes, codec: str = "latin-1") -> str | list[str]:
    text = raw.decode(codec).rstrip(" \x00").strip()
    parts = text.split("\\")
    return parts[0] if len(parts) == 1 else parts


def _quick(buf: bytes, complete: bool, spec: Mapping[int, tuple[str, str]]) -> tuple[Values, tuple[str, int, int]] | None:
    """Walk the header once, decoding only the tags in ``spec``. None: not a Part 10 file."""
    n = len(buf)
    if n < 132 or buf[128:132] != b"DICM":
        return None
    unpack, u32, vrs, longs = _E.unpack_from, _U32.unpack_from, _VRS, _LONG
    pos, ts_raw = 132, None
    while True:  # file meta group: explicit VR little endian
        if pos + 8 > n:
            raise _Short
        key, vr, length = unpack(buf, pos)
        if key & 0xFFFF != _META_END:
            break
        if vr in longs:
            if pos + 12 > n:
                raise _Short
            (length,) = u32(buf, pos + 8)
            start = pos + 12
        elif vr in vrs:
            start = pos + 8
        else:
            raise _Abort
        end = start + length
        if length == 0xFFFFFFFF or end > n:
            raise _Abort if length == 0xFFFFFFFF else _Short
        if key == _META_TS:
            ts_raw = buf[start:end]
        pos = end
    if ts_raw is None:
        raise _Abort
    ts = ts_raw.decode("ascii").rstrip("\x00 ")
    if ts == _BIG or ts in _DEFLATED:
        raise _Abort
    implicit = ts == _IMPLICIT
    found: list[tuple[str, bytes, int, int]] = []
    # One dict lookup per element for everything that matters: a wanted tag, or the pixel data.
    want = _merged(spec)
    get = want.get
    if implicit:
        unpack_i = _I.unpack_from
        while True:
            if pos + 8 > n:
                if complete:
                    raise _Abort  # no pixel data: the general reader says what the file is
                raise _Short
            key, length = unpack_i(buf, pos)
            start = pos + 8
            hit = get(key)
            if hit is not None:
                keyword, vr = hit
                if vr is None:
                    pixel = (keyword, start, length)
                    break
            if length == 0xFFFFFFFF:
                if hit is not None or key in _SQ_KEYS:
                    raise _Abort
                try:
                    pos = _skip_undefined(buf, start, True)
                except ValueError:
                    raise _Abort from None
                continue
            pos = start + length
            if hit is not None:
                if pos > n:
                    raise _Short
                found.append((keyword, vr, start, pos))
    else:
        header_len = _HEADER_LEN.get
        while True:
            if pos + 8 > n:
                if complete:
                    raise _Abort
                raise _Short
            key, vr, length = unpack(buf, pos)
            hl = header_len(vr)
            if hl is None:
                raise _Abort  # not a VR: damaged, let the general reader decide
            if hl == 12:
                if pos + 12 > n:
                    raise _Short
                (length,) = u32(buf, pos + 8)
            start = pos + hl
            hit = get(key)
            if hit is not None and hit[1] is None:
                pixel = (hit[0], start, length)
                break
            if length == 0xFFFFFFFF:
                if hit is not None or key in _SQ_KEYS:
                    raise _Abort
                try:
                    pos = _skip_undefined(buf, start, False)
                except ValueError:
                    raise _Abort from None
                continue
            pos = start + length
            if hit is not None:
                if pos > n:
                    raise _Short
                found.append((hit[0], vr, start, pos))
    if pixel[0] is _ZERO:
        if pixel[2] == 0:
            raise Refused(_ZERO_REASON)
        raise _Abort  # a command group element in a file: pydicom reads those

    values = Values()
    meta = Values()
    meta["TransferSyntaxUID"] = _text_value(ts_raw)
    values.file_meta = meta
    pn = None
    strings = _STRING_VRS
    for keyword, vr, start, end in found:
        if vr in strings:
            if keyword == "PatientName":
                pn = buf[start:end]
                continue
            # exactly header._value's decoding of a raw string element
            text = buf[start:end].decode("latin-1").rstrip(" \x00").strip()
            if "\\" in text:
                values[keyword] = text.split("\\")
            else:
                values[keyword] = text
        elif vr == b"US" and end > start and not (end - start) & 1:
            count = (end - start) >> 1
            values[keyword] = _H.unpack_from(buf, start)[0] if count == 1 else list(
                struct.unpack_from(f"<{count}H", buf, start))
        else:
            raise _Abort  # sequences, binary VRs, odd or empty US: pydicom converts those
    if pn is not None:
        charset = values.get("SpecificCharacterSet") or None
        codec = _QUICK_CHARSETS.get(charset) if isinstance(charset, str) or charset is None else None
        if codec is None or (charset is not None and b"\\" in pn):
            raise _Abort  # other character sets, multi-valued names: pydicom decodes those
        try:
            values["PatientName"] = _text_value(pn, codec)
        except UnicodeDecodeError:
            raise _Abort from None
    return values, pixel


_MERGED: dict[int, tuple[dict, dict]] = {}


def _merged(spec: Mapping[int, tuple[str, str]]) -> dict[int, tuple[str, bytes | None]]:
    """``spec`` with VRs as bytes, plus the pixel data tags (VR None), built once per spec."""
    cached = _MERGED.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    merged: dict[int, tuple[str, bytes | None]] = {k: (kw, vr.encode()) for k, (kw, vr) in spec.items()}
    merged.update({k: (kw, None) for k, kw in _STOP_KEYS.items()})
    _MERGED[id(spec)] = (spec, merged)  # keeps spec alive, so its id is never reused
    return merged


def _parse(buf: bytes, complete: bool, keep: frozenset[int] | None = None) -> tuple[Dataset, tuple[str, int, int] | None] | None:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    pos = 132
    meta: dict[int, RawDataElement] = {}
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        tag = group << 16 | elem
        end, vr, length, start = _element_at(buf, pos, False, tag)
        meta[tag] = RawDataElement(BaseTag(tag), vr, length, buf[start:end], start, False, True)
        pos = end
    else:
        raise _Short
    ts_raw = meta.get(0x00020010)
    if ts_raw is None:
        if buf[pos : pos + 8] == bytes(8) and len(buf) >= pos + 8:
            raise Refused(_ZERO_REASON)
        return None
    ts = ts_raw.value.decode("ascii", "replace").rstrip("\x00 ")
    if ts == _BIG or ts in _DEFLATED:
        return None
    implicit = ts == _IMPLICIT
    elements: dict[int, RawDataElement] = {}
    pixel = None
    hdr = _IMPLICIT_HDR if implicit else _EXPLICIT_HDR
    while True:
        if pos + 8 > n:
            if complete and pos == n:
                break  # the file ends without pixel data
            raise _Short
        if implicit:
            group, elem, length = hdr.unpack_from(buf, pos)
            tag = group << 16 | elem
            vr = None
            start = pos + 8
        else:
            group, elem, vr_bytes, length = hdr.unpack_from(buf, pos)
            tag = group << 16 | elem
            vr = _VRS.get(vr_bytes)
            if vr is None:
                if not tag and not length:
                    raise Refused(_ZERO_REASON)
                raise ValueError("bad VR")
            start = pos + 8
            if vr_bytes in _LONG:
                if pos + 12 > n:
                    raise _Short
                (length,) = _U32.unpack_from(buf, pos + 8)
                start = pos + 12
        if tag in _STOP:
            pixel = (_STOP[tag], start, length)
            break
        if length == 0xFFFFFFFF:
            end = _skip_undefined(buf, start, implicit)
            if keep is None or tag in keep:
                value = buf[start : end - 8]  # without the sequence delimiter
                elements[tag] = RawDataElement(BaseTag(tag), "SQ" if implicit else vr, len(value), value,
                                               start, implicit, True)
            pos = end
            continue
        end = start + length
        if end > n:
            raise _Short
        if keep is None or tag in keep:
            elements[tag] = RawDataElement(BaseTag(tag), vr, length, buf[start:end], start, implicit, True)
        pos = end
    if pixel is not None and pixel[0] is _ZERO:
        if pixel[2] == 0:
            raise Refused(_ZERO_REASON)
        raise ValueError("command group element in a file")  # pydicom reads those
    ds = Dataset(elements)
    ds.file_meta = FileMetaDataset(Dataset(meta))
    ds.set_original_encoding(implicit, True, None)
    return ds, pixel
