"""The series pre-read as a PDF a person reads: a summary page, then one page per lesion with its key image.

Qt-free, so ``xmedgpt preread --pdf`` works on a server without a display: the PDF is written
directly (PDF 1.4, the standard Helvetica fonts in WinAnsi encoding, key images as JPEG through
Pillow), text left as text so it can be searched and copied.

- Summary page: patient and series, the model, the time the pre-read took, the rule the windows
  followed, and a table of the lesions (id, location, size, images, tier).
- One page per lesion: id, location and size; images it spans (1-based, as the viewer numbers them)
  and its key image; longest axial diameter and approximate volume; centre in patient mm; the window it
  was read in; the reliability tier (coloured, each colour at least 4.5:1 on white, WCAG AA) with its
  score and checks; the model's description; the key slice in that window with the lesion's box, and
  a zoomed view of the box.

Every page says what it is: AI proposals for the reader to confirm, not a report.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from app.assistant.preread import MISSES_LESIONS, NOT_A_NEGATIVE_READ, below_point_note
from app.core.names import approximate_ml, window_name
from app.core.paths import write_private
from app.dicom.display import render
from app.dicom.model import Volume, Window
from inference.reliability.tiers import CHECK_LABEL

log = logging.getLogger(__name__)

PAGE_W, PAGE_H = 595.28, 841.89  # A4, points
MARGIN = 50.0
#: reliability tier → text colour on the white page (each at least 4.5:1 against white, WCAG AA)
TIER_COLOURS = {"green": (20, 110, 45), "amber": (150, 80, 0), "red": (170, 20, 20)}
NOT_ASSESSED = (90, 90, 90)
#: the AI's proposal, magenta as in the viewer (ui.viewer.overlays.SOURCE_COLORS): never a reliability hue -- a
#: red box read as "red tier" beside a lesion whose tier is green
BOX_COLOUR = (255, 110, 220)
MUTED = (90, 90, 90)
DISCLAIMER = ("AI pre-read: proposals for the reader to confirm, not a report. A lesion is in the report only "
              "once the reader has accepted it.")
WINDOWS = {"lung": Window(1500, -600, "lung"), "soft tissue": Window(400, 40, "soft tissue")}

#: Helvetica advance widths (1/1000 em) of the printable ASCII characters, from the standard AFM
_HELVETICA = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  # space … /
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,  # 0 … ?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,  # @ … O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,  # P … _
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,  # ` … o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,  # p … ~
]
#: characters outside WinAnsi written as their nearest readable form
_REPLACE = {"≥": ">=", "≤": "<=", "−": "-", "→": "->", "≈": "~", "✓": "v", "✗": "x", "\u2009": " ", "\u00a0": " "}

KeyImage = Callable[[Mapping], "np.ndarray | None"]


def _encode(text: str) -> bytes:
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text.encode("cp1252", errors="replace")


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in points of ``text`` in Helvetica (bold: about 5 % wider)."""
    units = 0
    for byte in _encode(text):
        units += _HELVETICA[byte - 32] if 32 <= byte < 127 else 556
    return units * size / 1000.0 * (1.05 if bold else 1.0)


def wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """Lines of at most ``width`` points (words longer than a line are cut)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size, bold) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word, size, bold) > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and text_width(word[:cut], size, bold) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _pdf_string(text: str) -> bytes:
    raw = _encode(text)
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)").replace(
        b"\r", b" ").replace(b"\n", b" ") + b")"


def _rgb(colour: tuple[int, int, int]) -> bytes:
    return " ".join(f"{c / 255:.3f}" for c in colour).encode()


# ---- the document -----------------------------------------------------------------------------------

class _Document:
    """PDF objects, pages and their images; :meth:`bytes` writes the file."""

    def __init__(self) -> None:
        self.objects: list[bytes] = []
        self.pages: list[_Page] = []

    def add(self, data: bytes) -> int:
        self.objects.append(data)
        return len(self.objects)

    def image(self, pixels: np.ndarray) -> int:
        """A JPEG image XObject (grey or RGB uint8); returns its object number."""
        arr = np.asarray(pixels)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        mode, space = ("L", b"/DeviceGray") if arr.ndim == 2 else ("RGB", b"/DeviceRGB")
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3] if arr.ndim == 3 else arr), mode)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        data = buf.getvalue()
        head = (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace " % (img.width, img.height)
                + space + b" /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>" % len(data))
        return self.add(head + b"\nstream\n" + data + b"\nendstream")

    def new_page(self) -> _Page:
        page = _Page(self)
        self.pages.append(page)
        return page

    def bytes(self, title: str) -> bytes:
        fonts = self.add(b"<< /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                         b" /F2 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold "
                         b"/Encoding /WinAnsiEncoding >> >>")
        pages_no = len(self.objects) + 1 + 2 * len(self.pages)  # after each page's content and page object
        kids = []
        total = len(self.pages)
        for i, page in enumerate(self.pages, 1):
            page.footer(f"Page {i} of {total}")
            content = b"\n".join(page.ops)
            packed = zlib.compress(content)
            c = self.add(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream")
            xobjects = b" ".join(b"/Im%d %d 0 R" % (n, n) for n in page.images)
            p = self.add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] /Contents %d 0 R "
                         b"/Resources << /Font %d 0 R /XObject << %s >> >> >>"
                         % (pages_no, PAGE_W, PAGE_H, c, fonts, xobjects))
            kids.append(p)
        assert len(self.objects) + 1 == pages_no
        self.add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
        info = self.add(b"<< /Title " + _pdf_string(title) + b" /Producer (XMedGPT Workstation) /CreationDate "
                        + _pdf_string(datetime.now(UTC).strftime("D:%Y%m%d%H%M%SZ")) + b" >>")
        root = self.add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_no)
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for n, obj in enumerate(self.objects, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(self.objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
            len(self.objects) + 1, root, info, xref)
        return bytes(out)


class _Page:
    """One page's drawing operations, written top down from a cursor ``y`` (points from the top)."""

    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.ops: list[bytes] = []
        self.images: list[int] = []
        self.y = MARGIN
        self.width = PAGE_W - 2 * MARGIN

    def text(self, line: str, size: float = 10, bold: bool = False, colour=(0, 0, 0), x: float = 0.0,
             advance: bool = True) -> None:
        base = PAGE_H - self.y - size
        self.ops.append(b"BT /F%d %.1f Tf " % (2 if bold else 1, size) + _rgb(colour) + b" rg %.2f %.2f Td "
                        % (MARGIN + x, base) + _pdf_string(line) + b" Tj ET")
        if advance:
            self.y += size * 1.3

    def paragraph(self, text: str, size: float = 10, bold: bool = False, colour=(0, 0, 0), indent: float = 0.0,
                  on_new_page: Callable[[], _Page] | None = None) -> _Page:
        page = self
        for line in wrap(text, self.width - indent, size, bold):
            if on_new_page is not None and page.y + size * 1.3 > PAGE_H - MARGIN - 20:
                page = on_new_page()
            page.text(line, size, bold, colour, x=indent)
        return page

    def rule(self, gap: float = 4.0) -> None:
        y = PAGE_H - self.y - gap
        self.ops.append(b"0.75 0.75 0.75 RG 0.6 w %.2f %.2f m %.2f %.2f l S" % (MARGIN, y, PAGE_W - MARGIN, y))
        self.y += 2 * gap

    def picture(self, pixels: np.ndarray, x: float, w: float, boxes: Sequence[tuple[float, float, float, float]] = (),
                caption: str = "") -> float:
        """Draw an image ``w`` points wide at ``x`` (from the left margin), the page cursor at its top; ``boxes``
        (image pixels, edge coordinates) as red rectangles; returns the height it took with its caption."""
        arr = np.asarray(pixels)
        rows, cols = arr.shape[:2]
        h = w * rows / cols
        n = self.doc.image(arr)
        self.images.append(n)
        left, bottom = MARGIN + x, PAGE_H - self.y - h
        self.ops.append(b"q %.2f 0 0 %.2f %.2f %.2f cm /Im%d Do Q" % (w, h, left, bottom, n))
        sx, sy = w / cols, h / rows
        for x0, y0, x1, y1 in boxes:
            self.ops.append(b"q " + _rgb(BOX_COLOUR) + b" RG 1.4 w %.2f %.2f %.2f %.2f re S Q"
                            % (left + x0 * sx, PAGE_H - self.y - y1 * sy, (x1 - x0) * sx, (y1 - y0) * sy))
        if caption:
            base = PAGE_H - self.y - h - 11
            self.ops.append(b"BT /F1 8.0 Tf " + _rgb(MUTED) + b" rg %.2f %.2f Td " % (left, base)
                            + _pdf_string(caption) + b" Tj ET")
        return h + 16

    def footer(self, text: str) -> None:
        """The disclaimer (bottom left, wrapped) and ``text`` (the page number, bottom right)."""
        lines = wrap(DISCLAIMER, self.width - text_width(text, 8) - 20, 7.5)[:2]
        for i, line in enumerate(lines):
            y = MARGIN / 2 + 9.5 * (len(lines) - 1 - i)
            self.ops.append(b"BT /F1 7.5 Tf " + _rgb(MUTED) + b" rg %.2f %.2f Td " % (MARGIN, y)
                            + _pdf_string(line) + b" Tj ET")
        self.ops.append(b"BT /F1 8.0 Tf " + _rgb(MUTED) + b" rg %.2f %.2f Td "
                        % (PAGE_W - MARGIN - text_width(text, 8), MARGIN / 2) + _pdf_string(text) + b" Tj ET")


# ---- what the pages say ---------------------------------------------------------------------------------

def _tier(lesion: Mapping) -> tuple[str, tuple[int, int, int]]:
    rel = lesion.get("reliability") or {}
    tier = str(rel.get("tier") or "")
    if tier in TIER_COLOURS:
        score = rel.get("score")
        return (f"{tier} ({float(score):.2f})" if isinstance(score, (int, float)) else tier), TIER_COLOURS[tier]
    return "not assessed", NOT_ASSESSED


def images_text(lesion: Mapping) -> str:
    """"18" or "17-19 (key 18)": 1-based, as the viewer numbers the images."""
    first, last = (int(v) for v in lesion["slices"])
    if first == last:
        return f"{first + 1}"
    return f"{first + 1}-{last + 1} (key {int(lesion['key_slice']) + 1})"


def _location(lesion: Mapping) -> str:
    loc = str(lesion.get("location") or "").strip()
    return loc[:1].upper() + loc[1:] if loc else "Location not stated"


def _window_caption(name: str) -> str:
    w = WINDOWS.get(name)
    if w is None:
        return ""
    return f"{window_name(w.name)} window (W {w.width:.0f} / L {w.center:.0f})"


def _crop(pixels: np.ndarray, box: Mapping, min_size: int = 48) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A square around the box (about three times its size), and the box in the crop's pixels."""
    rows, cols = pixels.shape[:2]
    x0, y0, x1, y1 = (float(box[k]) for k in ("x0", "y0", "x1", "y1"))
    side = int(min(max(min_size, 3 * max(x1 - x0, y1 - y0)), rows, cols))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(round(cx - side / 2), 0), cols - side))
    top = int(min(max(round(cy - side / 2), 0), rows - side))
    crop = pixels[top:top + side, left:left + side]
    return crop, (x0 - left, y0 - top, x1 - left, y1 - top)


def _summary(doc: _Document, document: Mapping, header: Mapping[str, str]) -> None:
    page = doc.new_page()
    page.text("Series pre-read", size=18, bold=True)
    page.y += 2
    for label, value in header.items():
        if value:
            page.paragraph(f"{label}: {value}", size=10)
    model = document.get("model") or {}
    if isinstance(model, Mapping):
        page.paragraph(f"Model: {model.get('id', '')}" + (f" ({model['engine']})" if model.get("engine") else ""))
    timing = document.get("timing") or {}
    if timing:
        page.paragraph(f"Pre-read: {int(timing.get('slices', 0))} images, {int(timing.get('requests', 0))} requests "
                       f"in {float(timing.get('total_s', 0.0)):.1f} s (sweep {float(timing.get('sweep_s', 0.0)):.1f} s, "
                       f"reasoning {float(timing.get('reasoning_s', 0.0)):.1f} s)", size=9, colour=MUTED)
    windows = document.get("windows") or {}
    if windows.get("rule"):
        page.paragraph(f"Windows: {windows['rule']}", size=9, colour=MUTED)
    point = document.get("operating_point")
    note = below_point_note(int(document.get("below_operating_point") or 0),
                            float(point["min_score"]) if isinstance(point, Mapping) and "min_score" in point else None)
    if note:
        page.paragraph(note, size=9, colour=MUTED)
    if document.get("cancelled"):
        page.paragraph("The pre-read was cancelled before it finished: the list may be incomplete.", size=10,
                       bold=True, colour=TIER_COLOURS["red"])
    page.rule()
    lesions = list(document.get("lesions") or [])
    if not lesions:
        page.text("The AI found no lesion in this series.", size=12, bold=True)
        page.paragraph(NOT_A_NEGATIVE_READ, size=10, bold=True, colour=TIER_COLOURS["amber"])
        return
    page.text(f"{len(lesions)} lesion{'s' if len(lesions) != 1 else ''} (image numbers as the viewer shows them)",
              size=12, bold=True)
    page.paragraph(MISSES_LESIONS, size=10, colour=MUTED)
    columns = [("Lesion", 0.0), ("Location", 50.0), ("Size (mm)", 215.0), ("Images", 280.0), ("Tier", 390.0)]
    for title, x in columns:
        page.text(title, size=9, bold=True, x=x, advance=False)
    page.y += 13
    for les in lesions:
        if page.y > PAGE_H - MARGIN - 40:
            page = doc.new_page()
        tier, colour = _tier(les)
        cells = [str(les.get("id", "")), _location(les)[:34], f"{float(les.get('diameter_mm', 0.0)):.1f}",
                 images_text(les)]
        for (_, x), value in zip(columns, cells):
            page.text(value, size=9, x=x, advance=False)
        page.text(tier, size=9, bold=True, colour=colour, x=columns[-1][1], advance=False)
        page.y += 13


def _lesion_page(doc: _Document, les: Mapping, key_image: KeyImage | None) -> None:
    page = doc.new_page()
    more = doc.new_page
    size = float(les.get("diameter_mm", 0.0))
    page.paragraph(f"{les.get('id', '')} · {_location(les)} · {size:.0f} mm", size=15, bold=True)
    tier, colour = _tier(les)
    page.text(f"Reliability: {tier}", size=11, bold=True, colour=colour)
    first, last = (int(v) for v in les["slices"])
    span = f"{first + 1}" if first == last else f"{first + 1} to {last + 1}, key image {les['key_slice'] + 1}"
    page.paragraph(f"Images: {span} ({last - first + 1} image{'s' if last != first else ''}; 1-based, as the "
                   f"viewer numbers them)")
    volume_ml = les.get("volume_ml")
    page.paragraph(f"Size: longest axial diameter {size:.1f} mm"
                   + (f", approximate volume {approximate_ml(volume_ml)}" if volume_ml is not None else ""))
    centre = les.get("center_patient_mm")
    if centre:
        page.paragraph("Centre (patient mm, LPS): " + ", ".join(f"{float(v):.1f}" for v in centre))
    caption = _window_caption(str(les.get("window", "")))
    if caption:
        page.paragraph(f"Read in the {caption[:1].lower() + caption[1:]}")
    page.y += 4
    page.text("Description", size=11, bold=True)
    desc = str(les.get("description") or "").strip() or "No description (the reasoning step did not run)."
    page = page.paragraph(desc, on_new_page=more)
    checks = list((les.get("reliability") or {}).get("checks") or [])
    if checks:
        page.y += 4
        page.text("Reliability checks", size=11, bold=True)
        for c in checks[:10]:
            mark = "passed" if c.get("passed") else "not passed"
            detail = str(c.get("detail") or "").strip()
            name = str(c.get("name") or "check")
            page = page.paragraph(f"{CHECK_LABEL.get(name, name)}: {mark}" + (f" - {detail}" if detail else ""), size=9,
                                  colour=MUTED if c.get("passed") else (0, 0, 0), indent=8, on_new_page=more)
    pixels = key_image(les) if key_image is not None else None
    if pixels is None:
        return
    box = les.get("box_pixels") or {}
    w = (page.width - 14) / 2
    rows, cols = np.asarray(pixels).shape[:2]
    if page.y + w * rows / cols + 40 > PAGE_H - MARGIN:
        page = more()
    page.y += 8
    key = int(les["key_slice"]) + 1
    boxes = [tuple(float(box[k]) for k in ("x0", "y0", "x1", "y1"))] if box else []
    h1 = page.picture(pixels, 0.0, w, boxes, " · ".join(x for x in (f"Image {key}", caption) if x))
    h2 = 0.0
    if box:
        crop, inside = _crop(np.asarray(pixels), box)
        zoom = cols / crop.shape[1]  # both drawn equally wide
        h2 = page.picture(crop, w + 14, w, [inside], f"Image {key}, zoomed ×{zoom:.1f} on the box")
    page.y += max(h1, h2)


def write_preread_pdf(path: Path, document: Mapping, key_image: KeyImage | None = None,
                      header: Mapping[str, str] | None = None) -> Path:
    """Write the pre-read ``document`` (:meth:`app.assistant.preread.Preread.to_json`, optionally with a
    ``series`` entry) as a PDF at ``path`` (owner-only, atomically); ``key_image(lesion)`` gives the lesion's
    key slice as uint8 pixels (see :func:`volume_key_images`), None to leave images out; ``header``: lines
    for the summary page ("Patient": …, "Series": …)."""
    doc = _Document()
    lines = dict(header or {})
    series = document.get("series") or {}
    if isinstance(series, Mapping) and series and "Series" not in lines:
        lines["Series"] = " · ".join(str(x) for x in (
            f"#{series['number']}" if series.get("number") not in (None, "") else "",
            series.get("description", ""), series.get("modality", ""),
            f"{series['slices']} images" if series.get("slices") else "") if x)
    if "Series UID" not in lines and document.get("series_uid"):
        lines["Series UID"] = str(document["series_uid"])
    _summary(doc, document, lines)
    for les in document.get("lesions") or []:
        _lesion_page(doc, les, key_image)
    data = doc.bytes("Series pre-read")
    return write_private(Path(path), data)


def volume_key_images(volume: Volume) -> KeyImage:
    """The key slice of a lesion (its JSON) rendered from ``volume`` in the window it was read in."""

    def key_image(lesion: Mapping) -> np.ndarray | None:
        k = int(lesion["key_slice"])
        if not 0 <= k < len(volume) or (volume.loaded and k >= volume.loaded):
            return None
        return render(volume, k, WINDOWS.get(str(lesion.get("window", ""))))

    return key_image
