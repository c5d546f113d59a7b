"""Decode a scanned series into a :class:`Volume`, progressively and cancellably.

Uncompressed little-endian 16-bit files (the common CT/MR case) take a fast
path: their pixel bytes, located at scan time, are read straight into the
preallocated volume with a few I/O threads. Everything else is decoded by
pydicom with the pylibjpeg / gdcm plug-ins (JPEG, JPEG-LS, JPEG 2000, RLE,
deflate, big endian), colour converted to RGB and palette colour expanded.
A frame that fails to decode is recorded in ``Volume.frame_problems`` and
left black; the rest of the series still loads. A compressed frame is handed to
a native decoder only after its codestream's own size (JPEG SOF, JPEG 2000 SIZ)
was found to agree with the header (``codestream.mismatch``), and GDCM is not
among the decoders where another one serves the syntax (:func:`keep_gdcm_last_resort`):
GDCM aborts the whole process, not just the frame, on headers it finds inconsistent.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from app.core.errors import XMedError
from app.dicom import codestream
from app.dicom import geometry as geo
from app.dicom.display import auto_window_for
from app.dicom.header import (
    TOO_DEEP,
    DicomInstance,
    describe_syntax,
    full_read_source,
    quiet_pydicom,
    recursed,
)
from app.dicom.luts import Lut, palette_rgb
from app.dicom.model import Series, Volume, Window
from app.dicom.rawheader import Refused

log = logging.getLogger(__name__)


def keep_gdcm_last_resort() -> list[str]:
    """Take GDCM off pydicom's decoder lists wherever another plugin decodes the same syntax.

    GDCM's Python binding lets C++ exceptions escape: on a header it finds inconsistent (forged
    Rows/Columns, Bits Stored ≠ Bits Allocated with planar configuration 1, found by the hostile
    fuzz test of issue #19) the process calls ``std::terminate`` and the viewer dies with every
    study in it. pylibjpeg (libjpeg, OpenJPEG), pyjpegls and Pillow raise Python errors instead,
    and this workstation ships them for every syntax GDCM serves; where GDCM is the only decoder
    (a trimmed install) it stays, behind the codestream and header checks. pydicom's registry is
    process-wide, so this runs once, at import, before any decoding thread starts.
    Returns the transfer syntaxes GDCM was removed from.
    """
    from pydicom.pixels import get_decoder

    removed = []
    for uid in (*codestream.SYNTAX_KIND, "1.2.840.10008.1.2.5"):
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        plugins = decoder.available_plugins
        if "gdcm" in plugins and len(plugins) > 1:
            decoder.remove_plugin("gdcm")
            removed.append(uid)
    return removed


keep_gdcm_last_resort()

OnFrame = Callable[[int, Volume], None]
Cancel = Callable[[], bool]


class LoadCancelled(XMedError):
    def __init__(self) -> None:
        super().__init__("Loading cancelled")


@dataclass
class LoadedVolume(Volume):
    """A :class:`Volume` plus where each frame came from and the header's display hints."""

    frame_sources: list[tuple[Path, int]] = field(default_factory=list)  # (file, stored frame index)
    header_windows: tuple[Window, ...] = ()
    voi_function: str = "LINEAR"
    bits_stored: int = 16


@dataclass(frozen=True)
class _Frame:
    inst: DicomInstance
    index: int  # frame index inside the file


def frame_plan(series: Series) -> list[_Frame]:
    """Frames of ``series`` in display order."""
    plan = []
    for inst in series.instances:
        order = getattr(inst, "frame_order", None) or range(inst.number_of_frames)
        plan.extend(_Frame(inst, j) for j in order)  # type: ignore[arg-type]
    return plan


def _is_color(inst: DicomInstance) -> bool:
    return inst.samples_per_pixel == 3 or inst.photometric == "PALETTE COLOR"


def _grey_dtype(inst: DicomInstance) -> np.dtype:
    if inst.pixel_tag == "FloatPixelData":
        return np.dtype(np.float32)
    if inst.pixel_tag == "DoubleFloatPixelData":
        return np.dtype(np.float64)
    if getattr(inst, "has_modality_lut", False):
        return np.dtype(np.int32)
    signed = inst.pixel_representation == 1
    bits = min(inst.bits_stored or inst.bits_allocated, inst.bits_allocated)
    if inst.bits_allocated <= 16:
        if signed or bits <= 15:
            return np.dtype(np.int16)
        return np.dtype(np.uint16)
    if signed or bits <= 31:
        return np.dtype(np.int32)
    return np.dtype(np.float64)


def _volume_dtype(plan: list[_Frame]) -> np.dtype:
    dtypes = {_grey_dtype(f.inst) for f in plan}
    dt = dtypes.pop()
    for other in dtypes:
        dt = np.promote_types(dt, other)
    return dt


def _instance_geometry(plan: list[_Frame]):
    positions = []
    for f in plan:
        inst = f.inst
        if inst.frame_positions:
            positions.append(inst.frame_positions[f.index])
        elif inst.number_of_frames == 1:
            positions.append(inst.image_position)
        else:
            positions.append(None)
    first = plan[0].inst
    return geo.build_geometry(positions, first.image_orientation, first.pixel_spacing)


def _rescale(f: _Frame) -> tuple[float, float]:
    inst = f.inst
    if getattr(inst, "has_modality_lut", False):
        return 1.0, 0.0
    if inst.frame_rescale:
        return inst.frame_rescale[f.index]
    return getattr(inst, "rescale_slope", 1.0), getattr(inst, "rescale_intercept", 0.0)


def new_volume(series: Series) -> tuple[LoadedVolume, list[_Frame]]:
    """An empty (zero-filled) volume shaped for ``series`` and the frames that fill it."""
    plan = frame_plan(series)
    if not plan:
        raise XMedError("This series has no images to load")
    first = plan[0].inst
    rows, cols = first.rows, first.columns
    color = _is_color(first)
    n = len(plan)
    if color:
        shape: tuple[int, ...] = (n, rows, cols, 3)
        dtype = np.dtype(np.uint8)
    else:
        shape = (n, rows, cols)
        dtype = _volume_dtype(plan)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    _check_memory(nbytes)
    frames = np.zeros(shape, dtype=dtype)
    rescale = np.array([_rescale(f) for f in plan], dtype=np.float64).reshape(n, 2)
    windows = tuple(first.windows) if not color else ()
    photometric = "RGB" if color else (first.photometric or "MONOCHROME2")
    vol = LoadedVolume(
        series=series,
        frames=frames,
        slopes=rescale[:, 0].copy(),
        intercepts=rescale[:, 1].copy(),
        geometry=_instance_geometry(plan),
        default_window=windows[0] if windows else None,
        photometric=photometric,
        frame_sources=[(f.inst.path, f.index) for f in plan],
        header_windows=windows,
        voi_function=first.voi_function,
        bits_stored=first.bits_stored,
    )
    if getattr(first, "has_voi_lut", False) and not color:
        vol.voi_lut = _header_voi_lut(first)
    return vol, plan


def _header_voi_lut(inst: DicomInstance) -> Lut | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(inst.path, stop_before_pixels=True, force=True)
        return Lut.from_item(ds.VOILUTSequence[0], ds.original_encoding[1] is not False,
                             inst.pixel_representation == 1)
    except Exception as exc:  # noqa: BLE001 - a damaged LUT just means windows are used instead
        log.debug("VOI LUT of %s unreadable: %r", inst.path, exc)
        return None


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else psutil's)."""
    try:
        with open("/proc/meminfo", "rb") as fp:  # what psutil reads on Linux, without its ~15 ms import
            for line in fp:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def _check_memory(nbytes: int) -> None:
    available = _available_memory()
    if available is None:
        return
    if nbytes > available * 0.9:
        raise XMedError(
            f"This series needs {nbytes / 1024**3:.1f} GiB of memory but only "
            f"{available / 1024**3:.1f} GiB is free; close other series or programs"
        )


def load_series(
    series: Series,
    on_frame: OnFrame | None = None,
    cancel: Cancel | None = None,
    *,
    only: Iterable[int] | None = None,
    workers: int | None = None,
) -> LoadedVolume:
    """Decode ``series`` into a volume in slice order.

    ``on_frame(k, volume)`` is called from the calling thread, in slice order,
    each time frames ``0..k`` are all present (``volume.loaded == k + 1``).
    ``cancel()`` returning True stops the load with :class:`XMedError`.
    ``only`` restricts decoding to those slice indices (the rest stay black).
    """
    vol, plan = new_volume(series)
    wanted = sorted(set(range(len(plan)) if only is None else (k for k in only if 0 <= k < len(plan))))
    # Group work by file: a multi-frame file is decoded once, frames handed out as they come.
    jobs: dict[Path, list[int]] = {}
    for k in wanted:
        jobs.setdefault(plan[k].inst.path, []).append(k)
    n_workers = workers or min(8, (os.cpu_count() or 2) * 2)
    landed: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def work(ks: list[int]) -> None:
        try:
            _decode_into(vol, plan, ks, landed, stop)
        except BaseException as exc:  # noqa: BLE001 - reported per frame, never raised into the UI
            reason = _reason(exc, plan[ks[0]].inst)
            for k in ks:
                landed.put((k, reason))

    pending = len(wanted)
    wanted_set = set(wanted)
    done = [k not in wanted_set for k in range(len(plan))]
    vol.loaded = 0
    # A few long-lived tasks sharing one iterator over the files in slice order: each file goes
    # to whichever task is free (frames land in order, the first slice first) without a future
    # and a thread hand-off per file. A list iterator's next() is atomic under the GIL.
    n_tasks = max(1, min(n_workers, len(jobs) or 1))
    pending_files = iter(list(jobs.values()))

    def work_batch() -> None:
        for ks in pending_files:
            if stop.is_set():
                return
            work(ks)

    with ThreadPoolExecutor(max_workers=n_tasks) as pool:
        futures = [pool.submit(work_batch) for _ in range(n_tasks)]
        try:
            while pending:
                if cancel is not None and cancel():
                    stop.set()
                    for fut in futures:
                        fut.cancel()
                    raise LoadCancelled()
                try:
                    k, problem = landed.get(timeout=0.05)
                except queue.Empty:
                    continue
                pending -= 1
                if problem:
                    vol.frame_problems[k] = problem
                done[k] = True
                while vol.loaded < len(plan) and done[vol.loaded]:
                    vol.loaded += 1
                    if on_frame is not None and vol.loaded - 1 in wanted_set:
                        on_frame(vol.loaded - 1, vol)
        finally:
            stop.set()
    if vol.frame_problems:
        log.warning("%s: %d frames could not be decoded", series.description, len(vol.frame_problems))
    if vol.default_window is None and not vol.is_color and wanted:
        vol.default_window = auto_window_for(vol, wanted[len(wanted) // 2])
    return vol


def _reason(exc: BaseException, inst: DicomInstance) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if recursed(exc):
        return TOO_DEEP
    text = str(exc).lower()
    if isinstance(exc, (EOFError,)) or "less than expected" in text or "truncat" in text or "end of" in text:
        return "image data ends early: file truncated"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image"
    if isinstance(exc, NotImplementedError) or "no plugins" in text or "unable to decode" in text:
        return f"could not decode {describe_syntax(inst.transfer_syntax_uid)} image data"
    log.debug("decode failed for %s: %r", inst.path, exc)
    return "image data is damaged and could not be decoded"


def _decode_into(vol: LoadedVolume, plan: list[_Frame], ks: list[int], landed, stop: threading.Event) -> None:
    inst = plan[ks[0]].inst
    if _fast_path_ok(inst, vol.frames.dtype):
        _read_native(vol, plan, ks, landed, stop)
    else:
        with quiet_pydicom():
            _decode_pydicom(vol, plan, ks, landed, stop)


def _fast_path_ok(inst: DicomInstance, dtype: np.dtype) -> bool:
    return (
        getattr(inst, "pixel_offset", None) is not None
        and inst.bits_allocated == 16
        and inst.samples_per_pixel == 1
        and inst.photometric in ("MONOCHROME1", "MONOCHROME2")
        and inst.pixel_tag == "PixelData"
        and not inst.has_modality_lut
        and dtype in (np.dtype(np.int16), np.dtype(np.uint16))
    )


def _read_native(vol: LoadedVolume, plan: list[_Frame], ks: list[int], landed, stop: threading.Event) -> None:
    inst = plan[ks[0]].inst
    nbytes = inst.frame_bytes
    bits = inst.bits_stored
    fd = os.open(inst.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        for k in ks:
            if stop.is_set():
                return
            target = vol.frames[k]
            got = _pread_into(fd, memoryview(target).cast("B"), inst.pixel_offset + plan[k].index * nbytes)
            if got != nbytes:
                landed.put((k, "image data ends early: file truncated"))
                continue
            _fix_unused_bits(target, bits, inst.pixel_representation == 1)
            landed.put((k, None))
    finally:
        os.close(fd)


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Read ``len(buf)`` bytes at ``offset`` into ``buf`` (no file object, no seek); bytes read."""
    n = len(buf)
    got = 0
    while got < n:
        if hasattr(os, "preadv"):
            step = os.preadv(fd, [buf[got:]], offset + got)
        else:  # Windows: no preadv
            os.lseek(fd, offset + got, os.SEEK_SET)
            with io.FileIO(fd, closefd=False) as fp:
                step = fp.readinto(buf[got:]) or 0
        if step <= 0:
            break
        got += step
    return got


def _fix_unused_bits(frame: np.ndarray, bits_stored: int, signed: bool) -> None:
    """Mask (unsigned) or sign-extend (signed) the bits above BitsStored, in place."""
    width = frame.dtype.itemsize * 8
    if bits_stored >= width or bits_stored <= 0:
        return
    view = frame.view(np.int16 if width == 16 else np.int32)
    if signed:
        shift = width - bits_stored
        np.left_shift(view, shift, out=view)
        np.right_shift(view, shift, out=view)
    else:
        np.bitwise_and(view, (1 << bits_stored) - 1, out=view)


def read_dataset(path: Path) -> pydicom.Dataset:
    """The full data set of ``path``, with a transfer syntax filled in when the file lacks one."""
    with warnings.catch_warnings(), open(path, "rb") as raw:
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(full_read_source(raw), force=True)
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        ds.file_meta = ds.file_meta if meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else (pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        )
    return ds


def _decode_pydicom(vol: LoadedVolume, plan: list[_Frame], ks: list[int], landed, stop: threading.Event) -> None:
    from pydicom.pixels import iter_pixels

    inst = plan[ks[0]].inst
    ds = read_dataset(inst.path)
    by_index = {plan[k].index: k for k in ks}
    indices = sorted(by_index)
    kind = codestream.kind_of(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if kind is not None:
        refused = _codestream_problems(ds, inst, indices, kind)
        for j, reason in refused.items():
            landed.put((by_index[j], reason))
        indices = [j for j in indices if j not in refused]
        if not indices:
            return
    little = ds.original_encoding[1] is not False
    signed = inst.pixel_representation == 1
    palette = inst.photometric == "PALETTE COLOR"
    palette_bits = 16
    if palette and "RedPaletteColorLookupTableDescriptor" in ds:
        palette_bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) or 16
    modality_lut = None
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        modality_lut = Lut.from_item(ds.ModalityLUTSequence[0], little, signed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = iter_pixels(ds, indices=indices if inst.number_of_frames > 1 else None)
        for j in indices:
            if stop.is_set():
                return
            k = by_index[j]
            try:
                arr = next(frames) if frames is not None else _one_frame(ds, j, inst)
            except Exception as exc:  # noqa: BLE001
                # The streaming decoder gave up (some odd files); decode this frame on its own.
                frames = None
                try:
                    arr = _one_frame(ds, j, inst)
                except Exception as exc2:  # noqa: BLE001
                    log.debug("frame %d of %s: %r / %r", j, inst.path, exc, exc2)
                    landed.put((k, _reason(exc2, inst)))
                    continue
            if palette:
                arr = palette_rgb(arr, ds, little)
            if vol.is_color:
                vol.frames[k] = to_rgb8(arr, palette_bits if palette else inst.bits_stored)
            else:
                if modality_lut is not None:
                    arr = modality_lut.apply(arr)
                vol.frames[k] = arr
            landed.put((k, None))


def _codestream_problems(ds: pydicom.Dataset, inst: DicomInstance, indices: list[int], kind: str) -> dict[int, str]:
    """Frames (stored index → reason) that must not reach a decoder: their codestream disagrees
    with the header the decoder is told, or the header is not what the scan saw."""
    try:
        told = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated))
    except Exception:  # noqa: BLE001 - pydicom cannot read what the scan could: damaged further on
        return dict.fromkeys(indices, "image data is damaged and could not be decoded")
    if told != (inst.rows, inst.columns, inst.samples_per_pixel, inst.bits_allocated):
        return dict.fromkeys(indices, "the file changed on disk since the study was opened: reopen the study")
    from pydicom.encaps import generate_fragmented_frames

    rows, cols, samples, bits = told
    wanted = set(indices)
    out: dict[int, str] = {}
    eot = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=inst.number_of_frames, extended_offsets=eot)
        for j, fragments in enumerate(frames):
            if j in wanted:
                wanted.discard(j)
                reason = codestream.mismatch(fragments, kind, rows, cols, samples, bits)
                if reason:
                    out[j] = reason
                if not wanted:
                    break
    except Exception as exc:  # noqa: BLE001 - pydicom's decoder would stop at the same place
        log.debug("fragments of %s unreadable: %r", inst.path, exc)
        out.update(dict.fromkeys(wanted, "compressed image data is damaged (fragments unreadable): not decoded"))
        return out
    out.update(dict.fromkeys(wanted, "image data ends early: file truncated"))  # frames not in the file
    return out


def _one_frame(ds: pydicom.Dataset, j: int, inst: DicomInstance) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if inst.number_of_frames == 1:
        return ds.pixel_array
    return pixel_array(ds, index=j)


def to_rgb8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of any depth as uint8 RGB (grey input is repeated into the three channels)."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr, 0, 255).astype(np.uint8)
    shift = max(0, bits - 8)
    return (arr.astype(np.uint64) >> shift).astype(np.uint8)
