"""The one ground-truth record of a synthetic lesion, and its one file format.

Both synthetic sources describe their lesions with :class:`LesionTruth`: the sample CT study
(:mod:`app.synthetic.sample`, the ``lesions`` of ``ground_truth.json``) and the cases of the
training corpus (:mod:`app.synthetic.cases`, the ``lesions`` of ``annotations.jsonl``). Same
field names, same units everywhere: sizes in millimetres, boxes in pixels of the image
(x = column, y = row, x1/y1 exclusive) and on the 0–1000 grounding scale, ``side`` the
patient's (:func:`side_of`: DICOM LPS, +x is the patient's left; the side word of
``location`` is always ``side``), and the size class from the one lesion-size rule
(:func:`inference.evaluation.sizes.size_bucket`).

:meth:`LesionTruth.from_dict` also reads the records written before this format was shared
(the sample study's lesions had no ``density`` or ``size_class``), so files already on disk
keep working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inference.evaluation.sizes import size_bucket
from inference.parsing import BOX_SCALE

BoxPx = tuple[int, int, int, int]


def to_1000(box: BoxPx, width: int, height: int) -> BoxPx:
    """Pixel box (x1/y1 exclusive edges) → integers on the 0–1000 grounding scale, never empty."""
    x0 = int(math.floor(box[0] * BOX_SCALE / width))
    y0 = int(math.floor(box[1] * BOX_SCALE / height))
    x1 = max(x0 + 1, min(BOX_SCALE, int(math.ceil(box[2] * BOX_SCALE / width))))
    y1 = max(y0 + 1, min(BOX_SCALE, int(math.ceil(box[3] * BOX_SCALE / height))))
    return x0, y0, x1, y1


def side_of(x_mm: float) -> str:
    """The patient's side of a point at patient coordinate x (DICOM LPS: +x points to the patient's left)."""
    return "left" if x_mm > 0 else "right"


def with_side(location: str, side: str) -> str:
    """``location`` with its side word set to ``side`` ("right hepatic lobe", "left" → "left hepatic lobe")."""
    words = location.split(" ")
    return " ".join(side if w in ("right", "left") else w for w in words)


def density_of(organ: str, kind: str) -> str:
    """The density word of a lesion of this organ and kind: solid | ground-glass (lung),
    hypodense | hyperdense (liver; a cyst is hypodense)."""
    if organ == "lung":
        return "ground-glass" if kind.startswith("ground-glass") else "solid"
    return "hyperdense" if kind.startswith("hyperdense") else "hypodense"


def _box(value: Any) -> BoxPx | None:
    return None if value is None else tuple(int(v) for v in value)  # type: ignore[return-value]


@dataclass
class LesionTruth:
    """One lesion as the image (or the study) shows it.

    ``box``/``box_1000`` are the lesion's box on a 2-D image (a corpus case); a CT study boxes
    the lesion on every slice it touches instead (its ``slices`` entries) and gives its
    attenuation, centre and slice range here.
    """

    id: str
    organ: str  # lung | liver
    side: str  # right | left (the patient's)
    location: str  # "right upper lobe", "left lower zone", "right hepatic lobe"
    kind: str  # solid nodule | ground-glass nodule | nodule | mass | hypodense lesion | hyperdense lesion | cyst
    density: str  # solid | ground-glass | hypodense | hyperdense
    margin: str  # smooth | lobulated | spiculated
    size_mm: float  # longest diameter, mm (0.1 mm)
    box: BoxPx | None = None  # pixels, x1/y1 exclusive
    box_1000: BoxPx | None = None  # the same box on the 0–1000 grounding scale
    hu: float | None = None  # attenuation, Hounsfield units (CT study)
    center_patient_mm: tuple[float, float, float] | None = None  # DICOM patient coordinates (CT study)
    slices: tuple[int, ...] | None = None  # first and last slice index it shows on, () if none (CT study)

    @property
    def size_class(self) -> str:
        """small | medium | large, by :func:`inference.evaluation.sizes.size_bucket`."""
        return size_bucket(self.size_mm)

    def side_problems(self) -> list[str]:
        """Why the side words disagree with each other or with the centre (empty when they agree)."""
        problems = []
        words = set(self.location.split())
        if self.side not in words or ({"right", "left"} - {self.side}) & words:
            problems.append(f"{self.id}: location '{self.location}' does not say side '{self.side}'")
        if self.center_patient_mm is not None and side_of(self.center_patient_mm[0]) != self.side:
            problems.append(f"{self.id}: side '{self.side}' but centre x {self.center_patient_mm[0]:+.1f} mm is the "
                            f"patient's {side_of(self.center_patient_mm[0])}")
        return problems

    @property
    def phrase(self) -> str:
        return f"{self.kind} in the {self.location}"

    def to_dict(self) -> dict:
        """The JSON record: every field that is set, then the derived ``size_class``."""
        out: dict[str, Any] = {"id": self.id, "organ": self.organ, "side": self.side, "location": self.location,
                               "kind": self.kind, "density": self.density, "margin": self.margin,
                               "size_mm": self.size_mm}
        for key in ("box", "box_1000", "hu", "center_patient_mm", "slices"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        out["size_class"] = self.size_class
        return out

    @classmethod
    def from_dict(cls, data: dict) -> LesionTruth:
        """The inverse of :meth:`to_dict`; also reads records without ``density`` (derived from
        organ and kind) and ignores a stored ``size_class`` (always derived from ``size_mm``)."""
        center = data.get("center_patient_mm")
        slices = data.get("slices")
        return cls(
            id=str(data["id"]), organ=str(data["organ"]), side=str(data["side"]), location=str(data["location"]),
            kind=str(data["kind"]), density=str(data.get("density") or density_of(data["organ"], data["kind"])),
            margin=str(data["margin"]), size_mm=float(data["size_mm"]),
            box=_box(data.get("box")), box_1000=_box(data.get("box_1000")),
            hu=None if data.get("hu") is None else float(data["hu"]),
            center_patient_mm=None if center is None else tuple(float(v) for v in center),  # type: ignore[arg-type]
            slices=None if slices is None else tuple(int(v) for v in slices),
        )
