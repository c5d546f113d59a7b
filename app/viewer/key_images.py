"""Key images the reader marks: saved with the study's workspace, exported with the signed report.

A reader marks the image on screen as a key image (the viewer's ``K``, again: unmark). The marks of a
study are one private JSON file beside its draft report and measurements in the workspace folder
(``<study uid>.key-images.json``, the file-name rules of :mod:`app.viewer.measure_store`), written
atomically and owner-only::

    {"format": "xmedgpt-key-images", "version": 1, "study_uid": "1.2.3",
     "key_images": [{"series_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5", "frame_number": 1,
                     "frame": 17, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}]}

The signed report's export references them in a Key Object Selection document ("Of Interest", TID 2010,
:mod:`app.report.export.kos`) and shows them in the PDF. The file is read strictly: a damaged one (or one
of another study) is set aside as ``*.corrupt-N``, never deleted, and :attr:`Loaded.problems` says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core import strict_json
from app.core.errors import XMedError
from app.viewer.measure_store import file_stem, read_study_file, write_study_file

log = logging.getLogger(__name__)

FORMAT = "xmedgpt-key-images"
VERSION = 1
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_KEY_IMAGES = 10_000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class KeyImageStoreError(XMedError):
    """The study's key images cannot be saved (permissions, disk full)."""


@dataclass(frozen=True)
class KeyImage:
    """One image the reader marked: the SOP instance (and frame of a multi-frame one) and, for showing
    it again, the slice index in the series as the viewer loaded it."""

    series_uid: str
    sop_instance_uid: str
    frame_number: int = 1  # 1-based frame of a multi-frame instance
    frame: int = 0  # slice index in the series as loaded when it was marked
    sop_class_uid: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.sop_instance_uid, self.frame_number

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "sop_instance_uid": self.sop_instance_uid,
                "frame_number": self.frame_number, "frame": self.frame, "sop_class_uid": self.sop_class_uid}

    @classmethod
    def from_dict(cls, d, where: str) -> KeyImage:
        d = strict_json.expect_object(d, where)
        strict_json.only_keys(d, ("series_uid", "sop_instance_uid", "frame_number", "frame", "sop_class_uid"), where)
        uids = {k: strict_json.expect_str(d, k, where=where, max_len=64, non_empty=True)
                for k in ("series_uid", "sop_instance_uid")}
        uids["sop_class_uid"] = strict_json.expect_str(d, "sop_class_uid", "", where=where, max_len=64)
        for k, v in uids.items():
            if v and not _UID.match(v):
                raise strict_json.InvalidJson(f"'{where}.{k}' is not a UID")
        return cls(series_uid=uids["series_uid"], sop_instance_uid=uids["sop_instance_uid"],
                   frame_number=strict_json.expect_int(d, "frame_number", 1, where=where, lo=1, hi=10**7),
                   frame=strict_json.expect_int(d, "frame", 0, where=where, lo=0, hi=10**7),
                   sop_class_uid=uids["sop_class_uid"])


@dataclass
class Loaded:
    key_images: list[KeyImage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class KeyImageStore:
    """The key images of each study, in the workspace folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, study_uid: str) -> Path:
        return self.root / f"{file_stem(study_uid)}.key-images.json"

    def load(self, study_uid: str) -> Loaded:
        """The study's key images, in the order they were marked; never raises for a damaged file."""
        images, problems = read_study_file(self.path(study_uid), study_uid, FORMAT, VERSION, "key_images",
                                           KeyImage.from_dict, MAX_FILE_BYTES, MAX_KEY_IMAGES,
                                           "The key images of this study")
        return Loaded(list({k.key: k for k in images}.values()), problems)

    def save(self, study_uid: str, images: Iterable[KeyImage]) -> Path:
        """Write the study's key images atomically, owner-only (an empty list is written too: unmarked)."""
        try:
            return write_study_file(self.path(study_uid), study_uid, FORMAT, VERSION, "key_images",
                                    [k.to_dict() for k in images])
        except OSError as exc:
            raise KeyImageStoreError(f"Could not save the key images: {exc.strerror or exc}.") from exc

    def toggle(self, study_uid: str, image: KeyImage) -> tuple[bool, list[KeyImage]]:
        """Mark ``image`` (or unmark it when it is marked); returns (marked now, the study's key images).
        A damaged file is set aside and the study starts again from this mark."""
        images = self.load(study_uid).key_images
        kept = [k for k in images if k.key != image.key]
        marked = len(kept) == len(images)
        if marked:
            kept.append(image)
        self.save(study_uid, kept)
        return marked, kept


def frames_of(images: Sequence[KeyImage], table: Sequence[tuple[str, int]], series_uid: str) -> set[int]:
    """The slice indices of the series loaded as ``table`` (slice → (SOP UID, frame number),
    :func:`app.viewer.measure_store.frame_table`) that are key images."""
    keys = {k.key for k in images if k.series_uid == series_uid}
    return {i for i, ref in enumerate(table) if ref in keys}
