"""Key images: the reader marks the image on screen (``K``, again: unmark), the viewports show a star on
marked slices, and the marks are kept with the study's workspace (:class:`app.viewer.key_images.KeyImageStore`)
so the signed report carries them (a Key Object Selection document and the PDF) and they come back when the
study is opened again. Only acquired images are marked: an MPR plane is not an image of the study.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.core.errors import XMedError
from app.viewer.key_images import KeyImage, KeyImageStore, frames_of
from app.viewer.measure_store import frame_table
from app.viewer.sync import series_identity
from ui.viewer.viewport import Viewport

log = logging.getLogger(__name__)


def default_root() -> Path:
    """The workspace folder of the reader's settings (where draft reports are kept)."""
    from app.core.settings import Settings

    return Settings.load().workspace_path()


class KeyImageKeeper(QObject):
    """Marks and unmarks key images of the viewports' series and shows which slices are marked."""

    message = Signal(str)  # a sentence for the status bar
    changed = Signal(str)  # study UID whose key images changed

    def __init__(self, root: Path | Callable[[], Path] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._root = root
        self._store: KeyImageStore | None = None
        self._viewports: list[Viewport] = []

    @property
    def store(self) -> KeyImageStore:
        if self._store is None:
            root = self._root() if callable(self._root) else self._root
            self._store = KeyImageStore(root if root is not None else default_root())
        return self._store

    def set_root(self, root: Path) -> None:
        """Keep the key images in another workspace folder (the reader changed it in Settings; tests)."""
        self._root, self._store = root, None
        for vp in self._viewports:
            self.show_marks(vp)

    def attach(self, vp: Viewport) -> None:
        self._viewports.append(vp)
        vp.key_image_requested.connect(lambda vp=vp: self.toggle(vp))
        vp.shown.connect(lambda vp=vp: self.show_marks(vp))

    def key_images(self, study_uid: str) -> list[KeyImage]:
        loaded = self.store.load(study_uid)
        for problem in loaded.problems:
            self.message.emit(problem)
        return loaded.key_images

    def show_marks(self, vp: Viewport) -> None:
        """Star the marked slices of the series ``vp`` shows."""
        volume = vp.volume
        ident = series_identity(volume) if volume is not None else None
        if ident is None or not ident.study_uid:
            vp.set_key_frames(())
            return
        images = self.key_images(ident.study_uid)
        vp.set_key_frames(frames_of(images, frame_table(volume.series.instances), ident.series_uid))

    def toggle(self, vp: Viewport) -> str:
        """Mark the image ``vp`` shows as a key image, or unmark it; returns the sentence also emitted."""
        volume = vp.volume
        if volume is None:
            return self._say("Open a study first: a key image is an image of the study.")
        ident = series_identity(volume)
        table = frame_table(volume.series.instances)
        k = vp.slice_index
        if not ident.study_uid or not 0 <= k < len(table) or not table[k][0]:
            return self._say("This image cannot be marked as a key image: it has no DICOM identity (an MPR plane "
                             "or a derived image). Mark the acquired slice instead.")
        sop, frame_number = table[k]
        inst = next((i for i in volume.series.instances if i.sop_instance_uid == sop), None)
        image = KeyImage(ident.series_uid, sop, frame_number, k, str(getattr(inst, "sop_class_uid", "") or ""))
        try:
            marked, images = self.store.toggle(ident.study_uid, image)
        except XMedError as exc:
            return self._say(str(exc))
        for other in self._viewports:
            if other.volume is not None and series_identity(other.volume).study_uid == ident.study_uid:
                self.show_marks(other)
        self.changed.emit(ident.study_uid)
        n = len(images)
        count = f"{n} key image{'s' if n != 1 else ''} in this study"
        if marked:
            return self._say(f"Image {k + 1} marked as a key image ({count}); it goes out with the signed report.")
        return self._say(f"Image {k + 1} is no longer a key image ({count}).")

    def _say(self, text: str) -> str:
        self.message.emit(text)
        return text
