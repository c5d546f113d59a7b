"""Read one file's header (no pixels) into a :class:`DicomInstance` or a reason it cannot open.

Everything a later pixel load needs is captured here so that loading never
re-parses the header of a plain single-frame file: pixel encoding, the offset
of native pixel data (for the fast path), rescale, windows, per-frame
geometry of enhanced multi-frame objects.

Hostile or damaged files (issue #19) stop here with a one-line reason: the limits of
``app.dicom.limits`` bound the bytes read and the nesting followed, a file without the
``DICM`` marker must start like a data set before pydicom is let near it, and a compressed
frame whose codestream disagrees with Rows/Columns is refused before any decoder sees it.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from app.dicom import codestream
from app.dicom.limits import (
    CODESTREAM_HEAD_BYTES,
    MAX_HEADER_BYTES,
    MAX_INSTANCE_BYTES,
    MAX_SEQUENCE_DEPTH,
    MAX_ZERO_ELEMENTS,
    MAX_ZIP_RATIO,
    ZIP_RATIO_MIN_BYTES,
)
from app.dicom.model import FileProblem, Instance, Window
from app.dicom.rawheader import (
    Refused,
    Values,
    file_meta_syntax,
    printable,
    quick_spec,
    read_fast,
)

log = logging.getLogger(__name__)

TOO_DEEP = f"sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep: damaged file, not opened"


def recursed(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a RecursionError (pydicom recurses once per
    nested sequence and sometimes reports running out of stack as another error)."""
    seen = 0
    while exc is not None and seen < 32:
        if isinstance(exc, RecursionError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}
#: Native little-endian syntaxes whose pixel bytes sit verbatim in the file.
DEFLATED = "1.2.840.10008.1.2.1.99"
DEFLATED_SYNTAXES = {DEFLATED, "1.2.840.10008.1.2.8.1"}
RAW_LE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


@dataclass
class DicomInstance(Instance):
    """An :class:`Instance` plus what the loader and the series grouping need."""

    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    samples_per_pixel: int = 1
    planar_configuration: int = 0
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    has_modality_lut: bool = False
    windows: tuple[Window, ...] = ()
    voi_function: str = "LINEAR"
    has_voi_lut: bool = False
    pixel_tag: str = "PixelData"
    pixel_offset: int | None = None  # file offset of native little-endian pixel bytes
    pixel_length: int | None = None
    assumed_syntax: bool = False  # file meta lacked a transfer syntax; guessed from encoding
    is_localizer: bool = False
    # enhanced / multi-frame: per-frame values, in stored frame order
    frame_positions: tuple[tuple[float, float, float], ...] | None = None
    frame_orientations: tuple[tuple[float, ...], ...] | None = None
    frame_rescale: tuple[tuple[float, float], ...] | None = None
    frame_order: tuple[int, ...] | None = None  # display order of stored frames
    # grouping keys (not part of the viewer's contract)
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession: str = ""
    series_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    modality: str = ""
    body_part: str = ""

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8


def describe_syntax(uid: str) -> str:
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001
        name = ""
    return name if name and name != uid else f"transfer syntax {printable(uid)}"


_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI", "LT", "ST", "PN"}


@lru_cache(maxsize=256)
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag, dictionary_VR(tag)


_USED = (
    "SpecificCharacterSet SOPClassUID SOPInstanceUID Rows Columns BitsAllocated BitsStored "
    "PixelRepresentation SamplesPerPixel PlanarConfiguration NumberOfFrames PhotometricInterpretation "
    "InstanceNumber ImagePositionPatient ImageOrientationPatient PixelSpacing ImagerPixelSpacing "
    "SliceThickness ImageType AcquisitionNumber RescaleSlope RescaleIntercept ModalityLUTSequence "
    "WindowCenter WindowWidth WindowCenterWidthExplanation VOILUTFunction VOILUTSequence PatientID "
    "PatientName PatientBirthDate PatientSex StudyInstanceUID StudyDate StudyTime StudyDescription "
    "AccessionNumber SeriesInstanceUID SeriesNumber SeriesDescription Modality BodyPartExamined "
    "SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence"
).split()


@lru_cache(maxsize=1)
def _keep_tags() -> frozenset[int]:
    """Top-level tags the scan reads; the fast reader keeps only these."""
    return frozenset(_tag_vr(k)[0] for k in _USED)


@lru_cache(maxsize=1)
def _quick_spec() -> dict[int, tuple[str, str]]:
    """The same tags for the reader's quick path: tag → (keyword, dictionary VR)."""
    return quick_spec({_tag_vr(k)[0]: (k, _tag_vr(k)[1]) for k in _USED})


def _value(ds: Dataset, keyword: str) -> Any:
    """An element's value, decoded straight from the raw bytes for plain string/US values.

    pydicom's general conversion costs ~0.1 ms per element; a scan reads ~40 per
    file, so simple values are decoded here and everything else goes through pydicom.
    """
    if type(ds) is Values:
        return ds.get(keyword)  # the quick reader decoded it already, exactly as below
    tag, vr = _tag_vr(keyword)
    elem = ds._dict.get(tag)  # noqa: SLF001 - raw access avoids converting what we never use
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.value is not None:
        evr = elem.VR or vr
        raw = elem.value
        if evr in _STRING_VRS:
            text = raw.decode("latin-1").rstrip(" \x00").strip()
            parts = text.split("\\")
            return parts[0] if len(parts) == 1 else parts
        if evr == "US" and len(raw) % 2 == 0:
            little = ds.original_encoding[1] is not False
            vals = struct.unpack(("<" if little else ">") + "H" * (len(raw) // 2), raw)
            return vals[0] if len(vals) == 1 else list(vals)
    value = ds[tag].value
    return value


#: Multi-valued element values (plain strings are tested first: ABC checks cost a scan ~10 ms).
_SEQ = (list, tuple, pydicom.multival.MultiValue)


def _seq_get(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword) if type(ds) is Values else _value(ds, keyword)
    if value is None or value == "":
        return None
    return value


def _num(ds: Dataset | None, keyword: str, cast=float, default: Any = None, index: int | None = None) -> Any:
    try:
        value = _seq_get(ds, keyword) if ds is not None else None
        if value is None:
            return default
        if (type(value) is not str and isinstance(value, _SEQ)):
            value = value[index or 0]
        return cast(value)
    except Exception:  # noqa: BLE001 - a damaged value is treated as absent
        return default


def _floats(ds: Dataset | None, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = _seq_get(ds, keyword) if ds is not None else None
        if value is None:
            return None
        seq = value if (type(value) is not str and isinstance(value, _SEQ)) else [value]
        out = tuple(float(v) for v in seq)
        return out if len(out) == n else None
    except Exception:  # noqa: BLE001
        return None


def _text(ds: Dataset | None, keyword: str) -> str:
    try:
        if keyword == "PatientName" and _seq_get(ds, "SpecificCharacterSet") is not None:
            value = ds.get(keyword)  # character sets beyond ASCII/Latin-1: let pydicom decode
        else:
            value = _seq_get(ds, keyword)
        if value is None:
            return ""
        if (type(value) is not str and isinstance(value, _SEQ)):
            return "\\".join(str(v) for v in value).strip()
        return str(value).strip()
    except Exception:  # noqa: BLE001
        return ""


def _multi(value: Any) -> list:
    if value is None:
        return []
    return list(value) if (type(value) is not str and isinstance(value, _SEQ)) else [value]


def _windows(ds: Dataset) -> tuple[Window, ...]:
    try:
        centers = _multi(_seq_get(ds, "WindowCenter"))
        widths = _multi(_seq_get(ds, "WindowWidth"))
        names = _multi(_seq_get(ds, "WindowCenterWidthExplanation"))
        out = []
        for i, (c, w) in enumerate(zip(centers, widths)):
            w = float(w)
            if w <= 0:
                continue
            name = str(names[i]) if i < len(names) and names[i] else f"header {i + 1}"
            out.append(Window(width=w, center=float(c), name=name))
        return tuple(out)
    except Exception:  # noqa: BLE001
        return ()


def _element_header(fp, implicit: bool, little: bool) -> tuple[str, int, int] | None:
    """Parse the pixel data element header at the current position: (keyword, value offset, length)."""
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        offset = start + 8
    elif head[4:6] in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(endian + "L", more)
        offset = start + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        offset = start + 8
    return _PIXEL_TAGS[tag], offset, length


class _QuietPydicom(logging.Filter):
    """Drops pydicom's own log lines while this thread is probing a file: we report our own reason."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "quiet", False)


_QUIET = _QuietPydicom()
logging.getLogger("pydicom").addFilter(_QUIET)


@contextmanager
def quiet_pydicom():
    """Silence pydicom's log lines and warnings in this thread (we give our own reasons)."""
    before = getattr(_QUIET.local, "quiet", False)
    _QUIET.local.quiet = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.local.quiet = before


def read_header(path: Path) -> DicomInstance | FileProblem:
    """The instance described by ``path``'s header, or the reason it cannot be shown."""
    try:
        fast: Any = read_fast(path, _keep_tags(), _quick_spec())
    except OSError as exc:
        fast = exc
    except Refused as exc:
        return FileProblem(path, str(exc))
    except RecursionError:  # the raw reader never nests this deep; kept as a last guard
        return FileProblem(path, TOO_DEEP)
    if fast is not None and type(fast) is tuple and type(fast[0]) is Values:
        ds, pixel = fast
        if _syntax(ds) in RAW_LE_SYNTAXES:
            # The common case: one open, one read, and nothing below calls pydicom (so no need
            # to silence it); the file size comes from the same open.
            try:
                return _instance(path, ds, pixel, ds.size)
            except Exception as exc:  # noqa: BLE001 - a damaged header value must not stop the scan
                log.debug("header of %s damaged: %r", path, exc)
                return FileProblem(path, "image header is damaged (unreadable values)")
    with quiet_pydicom():
        return _read_header(path, fast)


def _read_header(path: Path, fast: Any) -> DicomInstance | FileProblem:
    """``fast``: what :func:`read_fast` gave (None to fall back, or the OSError it raised)."""
    error = fast if isinstance(fast, OSError) else None
    if error is not None:
        fast = None
    if fast is not None and type(fast[0]) is Values:
        size = fast[0].size
    else:
        try:
            size = path.stat().st_size
        except OSError as exc:
            return FileProblem(path, f"cannot be read ({exc.strerror or exc})")
        if size == 0:
            return FileProblem(path, "empty file (0 bytes)")
        if error is not None:
            return FileProblem(path, f"cannot be read ({error.strerror or error})")
    if fast is not None:
        ds, pixel = fast
    else:
        try:
            ds, pixel = _read_pydicom(path, size)
        except Refused as exc:
            return FileProblem(path, str(exc))
        except RecursionError:  # pydicom recurses once per nested sequence
            return FileProblem(path, TOO_DEEP)
        except (EOFError, struct.error, OSError, ValueError, TypeError, KeyError, IndexError,
                NotImplementedError) as exc:
            log.debug("header of %s unreadable: %r", path, exc)
            return FileProblem(path, TOO_DEEP if recursed(exc) else "file is truncated or damaged (header unreadable)")
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
            log.debug("header of %s unreadable: %r", path, exc)
            return FileProblem(path, TOO_DEEP if recursed(exc) else "file is damaged (header unreadable)")
        if ds is None:
            return FileProblem(path, "not a DICOM file")
    try:
        return _instance(path, ds, pixel, size)
    except Exception as exc:  # noqa: BLE001 - a damaged header value must not stop the scan
        log.debug("header of %s damaged: %r", path, exc)
        return FileProblem(path, TOO_DEEP if recursed(exc) else "image header is damaged (unreadable values)")


class _Bounded(io.RawIOBase):
    """A file as pydicom's reader sees it: in a file larger than ``MAX_HEADER_BYTES`` no read past
    that, and a run of ``MAX_ZERO_ELEMENTS`` all-zero element headers ends the read (:class:`Refused`
    both); "the rest" (pydicom's read of a deflated data set) stops at ``rest_ends`` when given."""

    def __init__(self, raw: io.BufferedIOBase, size: int, rest_ends: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self.name = raw.name
        self._pos = 0
        self._limit = MAX_HEADER_BYTES if size > MAX_HEADER_BYTES else None
        self._rest_ends = rest_ends  # where "the rest" (a deflated data set's stream) ends
        self._zeros = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._raw.seek(offset, whence)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self._limit is not None and n is not None and n >= 0 and self._pos + n > self._limit:
            raise Refused(f"image header is larger than {MAX_HEADER_BYTES // 1024**2} MiB: damaged file, not opened")
        if n is None or n < 0:  # a deflated data set: its stream, not whatever follows it
            n = -1 if self._rest_ends is None else max(0, self._rest_ends - self._pos)
        data = self._raw.read(n)
        self._pos += len(data)
        if n == 8:
            if data == b"\0\0\0\0\0\0\0\0":
                self._zeros += 1
                if self._zeros > MAX_ZERO_ELEMENTS:
                    raise Refused("file is filled with zero bytes where the image header should be: not an image")
            else:
                self._zeros = 0
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _plausible_start(head: bytes) -> bool:
    """Whether a file without the 'DICM' marker starts like a data set: an even group between
    (0002,xxxx) and the pixel data, in either byte order. Zero-filled files do not."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        (group,) = struct.unpack(order + "H", head[:2])
        if not group & 1 and 0x0002 <= group <= 0x7FE0:
            return True
    return False


def _deflate_problem(raw: io.BufferedIOBase, size: int) -> tuple[str | None, int | None]:
    """For a deflated data set (pydicom inflates all of it in memory): why it must not be inflated
    (not deflate data, or it unpacks like a zip bomb), and where its stream ends. (None, None) for
    other files."""
    found = file_meta_syntax(raw.read(min(size, 1 << 16)))
    if found is None or found[0] not in DEFLATED_SYNTAXES:
        return None, None
    raw.seek(found[1])
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    packed = unpacked = 0
    try:
        while not inflate.eof and (chunk := raw.read(1 << 20)):
            packed += len(chunk)
            while chunk:
                unpacked += len(inflate.decompress(chunk, 1 << 24))  # never more than 16 MiB at once
                chunk = inflate.unconsumed_tail
                if unpacked > MAX_INSTANCE_BYTES + MAX_HEADER_BYTES or (
                        unpacked >= ZIP_RATIO_MIN_BYTES and unpacked > MAX_ZIP_RATIO * packed):
                    return (f"deflated data set unpacks to more than {unpacked / 1024**2:.0f} MiB from "
                            f"{packed / 1024**2:.1f} MiB: damaged or hostile file, not opened"), None
    except zlib.error:
        return "deflated data set is damaged (not deflate data): not opened", None
    return None, found[1] + packed - len(inflate.unused_data) if inflate.eof else None


def full_read_source(raw: io.BufferedIOBase):
    """What pydicom should read a whole file from: ``raw`` itself, or for a deflated data set a view
    ending with its deflate stream (pydicom reads "the rest" into memory and inflates all of it).
    Raises :class:`Refused` when the stream must not be inflated."""
    problem, ends = _deflate_problem(raw, os.fstat(raw.fileno()).st_size)
    raw.seek(0)
    if problem:
        raise Refused(problem)
    return raw if ends is None else _Bounded(raw, 0, ends)


def _read_pydicom(path: Path, size: int) -> tuple[Dataset | None, tuple[str, int, int] | None]:
    with open(path, "rb") as raw:
        problem, deflate_ends = _deflate_problem(raw, size)
        if problem:
            raise Refused(problem)
        raw.seek(0)
        fp = _Bounded(raw, size, deflate_ends)
        ds, _forced = _read(fp)
        if ds is None:
            return None, None
        implicit, little = _encoding(ds)
        if _syntax(ds) in DEFLATED_SYNTAXES:
            raw.seek(0)
            return ds, _deflated_pixel(_Bounded(raw, size, deflate_ends))
        try:
            return ds, _element_header(fp, implicit, little)
        except (OSError, struct.error):
            return ds, None


def _deflated_pixel(fp) -> tuple[str, int, int] | None:
    # The data set is zlib-compressed after the meta header: no file offsets to record.
    ds = pydicom.dcmread(fp)
    for keyword in _PIXEL_TAGS.values():
        if keyword in ds:
            return keyword, -1, len(ds[keyword].value)
    return None


def _read(fp) -> tuple[Dataset | None, bool]:
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True), False
    except InvalidDicomError:
        pass
    fp.seek(0)
    if not _plausible_start(fp.read(8)):
        return None, True  # never read a whole file to learn it is not DICOM
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001
        if recursed(exc):
            raise
        return None, True
    # Without the 'DICM' marker only accept what clearly is a DICOM data set.
    try:
        plausible = any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")) or (
            "Rows" in ds and "Columns" in ds
        )
    except Exception:  # noqa: BLE001
        plausible = False
    return (ds, True) if plausible else (None, True)


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    enc = getattr(ds, "original_encoding", None)
    if enc and enc[0] is not None:
        return bool(enc[0]), bool(enc[1])
    ts = _syntax(ds)
    return ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = _value(meta, "TransferSyntaxUID") if meta is not None else None
    return str(ts).strip() if ts else ""


def _instance(path: Path, ds: Dataset, pixel: tuple[str, int, int] | None, size: int) -> DicomInstance | FileProblem:
    sop_class = _text(ds, "SOPClassUID")
    if pixel is None:
        meta = getattr(ds, "file_meta", None)
        cls = sop_class or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
        if not cls:
            return FileProblem(path, "no image in this DICOM file (damaged, truncated or incomplete)")
        kind = describe_syntax(cls)
        if kind.startswith("transfer syntax"):
            kind = f"SOP class {printable(cls)}"
        if "Image" in kind or "Rows" in ds:
            return FileProblem(path, f"{kind} without pixel data (file truncated or incomplete)")
        return FileProblem(path, f"not an image ({kind}): nothing to display")
    keyword, offset, length = pixel

    ts = _syntax(ds)
    assumed = False
    if not ts:
        if length == 0xFFFFFFFF or _starts_with_item(path, offset):
            return FileProblem(path, "compressed image whose file does not say how (transfer syntax missing)")
        implicit, little = _encoding(ds)
        ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
        assumed = True
    if ts not in NATIVE_SYNTAXES:
        problem = _codec_problem(ts)
        if problem:
            return FileProblem(path, problem)

    rows = _num(ds, "Rows", int)
    cols = _num(ds, "Columns", int)
    bits = _num(ds, "BitsAllocated", int)
    for label, value in (("Rows", rows), ("Columns", cols), ("Bits Allocated", bits)):
        if value is None:
            return FileProblem(path, f"image header incomplete: {label} is missing or unreadable")
    if rows <= 0 or cols <= 0:
        return FileProblem(path, f"image has no size ({rows}×{cols} pixels)")
    if bits not in (1, 8, 16, 32, 64):
        return FileProblem(path, f"unsupported Bits Allocated ({bits})")
    samples = _num(ds, "SamplesPerPixel", int, 1)
    frames = _num(ds, "NumberOfFrames", int, 1) or 1
    if samples not in (1, 3) or frames < 1:
        return FileProblem(path, f"unsupported image layout ({samples} samples per pixel, {frames} frames)")
    decoded = rows * cols * samples * frames * max(bits, 8) // 8
    if decoded > MAX_INSTANCE_BYTES:
        return FileProblem(
            path,
            f"image too large to open ({cols}×{rows} pixels × {frames} frames = {decoded / 1024**3:.1f} GiB)",
        )
    kind = codestream.kind_of(ts)
    if kind is not None:
        # What native decoders are told must at least be self-consistent (GDCM aborts otherwise).
        stored = _num(ds, "BitsStored", int, bits)
        if not 1 <= stored <= bits:
            return FileProblem(path, f"damaged file: Bits Stored ({stored}) does not fit Bits Allocated ({bits})")
        for label, keyword in (("Pixel Representation", "PixelRepresentation"),
                               ("Planar Configuration", "PlanarConfiguration")):
            value = _num(ds, keyword, int, 0)
            if value not in (0, 1):
                return FileProblem(path, f"damaged file: {label} is {value} (0 or 1 expected)")
    if kind is not None and length == 0xFFFFFFFF and offset >= 0:
        problem = _codestream_problem(path, offset, kind, rows, cols, samples, bits)
        if problem:
            return FileProblem(path, problem)
    photometric = _text(ds, "PhotometricInterpretation").upper() or ("RGB" if samples == 3 else "MONOCHROME2")

    pixel_offset = None
    if ts in NATIVE_SYNTAXES and length != 0xFFFFFFFF:
        per_pixel = 2 if photometric == "YBR_FULL_422" and samples == 3 else samples
        expected = (rows * cols * per_pixel * frames * bits + 7) // 8
        if length < expected:
            return FileProblem(
                path, f"pixel data is shorter than the image needs ({length} of {expected} bytes): file damaged"
            )
        if ts in RAW_LE_SYNTAXES:
            if offset + expected > size:
                return FileProblem(path, "file is truncated: the image data ends early")
            pixel_offset = offset

    inst = DicomInstance(
        path=path,
        sop_instance_uid=_text(ds, "SOPInstanceUID") or f"file:{path}",
        sop_class_uid=sop_class,
        rows=rows,
        columns=cols,
        number_of_frames=frames,
        instance_number=_num(ds, "InstanceNumber", int),
        image_position=_floats(ds, "ImagePositionPatient", 3),
        image_orientation=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(ds, "PixelSpacing", 2) or _floats(ds, "ImagerPixelSpacing", 2),
        slice_thickness=_num(ds, "SliceThickness", float),
        transfer_syntax_uid=ts,
        photometric=photometric,
        image_type=tuple(str(v).upper() for v in _multi(_seq_get(ds, "ImageType"))) if _safe_has(ds, "ImageType") else (),
        acquisition_number=_num(ds, "AcquisitionNumber", int),
        bits_allocated=bits,
        bits_stored=_num(ds, "BitsStored", int, bits),
        pixel_representation=_num(ds, "PixelRepresentation", int, 0),
        samples_per_pixel=samples,
        planar_configuration=_num(ds, "PlanarConfiguration", int, 0),
        rescale_slope=_num(ds, "RescaleSlope", float, 1.0) or 1.0,
        rescale_intercept=_num(ds, "RescaleIntercept", float, 0.0),
        has_modality_lut="ModalityLUTSequence" in ds,
        windows=_windows(ds),
        voi_function=(_text(ds, "VOILUTFunction").upper() or "LINEAR"),
        has_voi_lut="VOILUTSequence" in ds,
        pixel_tag=keyword,
        pixel_offset=pixel_offset,
        pixel_length=length,
        assumed_syntax=assumed,
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
        study_uid=_text(ds, "StudyInstanceUID"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        accession=_text(ds, "AccessionNumber"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=_num(ds, "SeriesNumber", int),
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined"),
    )
    inst.is_localizer = "LOCALIZER" in inst.image_type
    if frames > 1:
        _functional_groups(ds, inst)
    return inst


def _codestream_problem(path: Path, offset: int, kind: str, rows: int, cols: int, samples: int,
                        bits: int) -> str | None:
    """Why the first compressed frame disagrees with the header (its codestream's own size), or None.

    Reads the start of the first fragment only (``CODESTREAM_HEAD_BYTES``); a header not found
    there is left to the loader, which checks every whole frame before decoding it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        head = _pread(fd, 16, offset)
        if len(head) < 16:
            return None
        tag, bot = struct.unpack_from("<LL", head)
        if tag != 0xE000FFFE or bot == 0xFFFFFFFF:
            return None  # not an item: pydicom's decoder will say what is wrong
        at = offset + 8 + bot
        item = _pread(fd, 8, at)
        if len(item) < 8:
            return None
        tag, length = struct.unpack("<LL", item)
        if tag != 0xE000FFFE:
            return None
        data = _pread(fd, min(length, CODESTREAM_HEAD_BYTES), at + 8)
    except OSError:
        return None
    finally:
        os.close(fd)
    return codestream.mismatch(data, kind, rows, cols, samples, bits, complete=len(data) == length)


def _pread(fd: int, n: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def _starts_with_item(path: Path, offset: int) -> bool:
    """True when the pixel value begins with an encapsulation item tag (compressed fragments)."""
    if offset < 0:
        return False
    with open(path, "rb") as fp:
        fp.seek(offset)
        return fp.read(4) == b"\xfe\xff\x00\xe0"


def _safe_has(ds: Dataset, keyword: str) -> bool:
    try:
        return _seq_get(ds, keyword) is not None
    except Exception:  # noqa: BLE001
        return False


def _codec_problem(ts: str) -> str | None:
    from pydicom.pixels import get_decoder

    name = describe_syntax(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"compressed as {name}, which this workstation cannot decode"
    except Exception:  # noqa: BLE001
        return f"unknown compression ({name})"
    if not decoder.is_available:
        return f"compressed as {name}; the decoder for it is not installed"
    return None


def _item(seq_owner: Dataset | None, keyword: str) -> Dataset | None:
    if seq_owner is None:
        return None
    try:
        seq = seq_owner.get(keyword)
        return seq[0] if seq else None
    except Exception:  # noqa: BLE001
        return None


def _functional_groups(ds: Dataset, inst: DicomInstance) -> None:
    """Per-frame position, orientation and rescale of an enhanced multi-frame object."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    except Exception:  # noqa: BLE001
        per_frame = []
    if shared is None and not per_frame:
        return
    n = inst.number_of_frames
    positions: list[tuple[float, float, float] | None] = []
    orientations: list[tuple[float, ...] | None] = []
    rescale: list[tuple[float, float]] = []
    spacing = None
    for i in range(n):
        frame = per_frame[i] if i < len(per_frame) else None

        def group(keyword: str) -> Dataset | None:
            return _item(frame, keyword) or _item(shared, keyword)

        pos = group("PlanePositionSequence")
        positions.append(_floats(pos, "ImagePositionPatient", 3) if pos is not None else None)
        ori = group("PlaneOrientationSequence")
        orientations.append(_floats(ori, "ImageOrientationPatient", 6) if ori is not None else None)
        pvt = group("PixelValueTransformationSequence")
        if pvt is not None:
            rescale.append((_num(pvt, "RescaleSlope", float, 1.0) or 1.0, _num(pvt, "RescaleIntercept", float, 0.0)))
        else:
            rescale.append((inst.rescale_slope, inst.rescale_intercept))
        if spacing is None:
            pm = group("PixelMeasuresSequence")
            if pm is not None:
                spacing = _floats(pm, "PixelSpacing", 2)
                inst.slice_thickness = inst.slice_thickness or _num(pm, "SliceThickness", float)
        if i == 0 and not inst.windows:
            voi = group("FrameVOILUTSequence")
            if voi is not None:
                inst.windows = _windows(voi)
                inst.voi_function = _text(voi, "VOILUTFunction").upper() or inst.voi_function
    if all(p is not None for p in positions):
        inst.frame_positions = tuple(positions)  # type: ignore[arg-type]
        inst.image_position = positions[0]
    if all(o is not None for o in orientations):
        inst.frame_orientations = tuple(orientations)  # type: ignore[arg-type]
        inst.image_orientation = orientations[0]  # type: ignore[assignment]
    inst.frame_rescale = tuple(rescale)
    if spacing:
        inst.pixel_spacing = spacing  # type: ignore[assignment]
    if rescale:
        inst.rescale_slope, inst.rescale_intercept = rescale[0]
