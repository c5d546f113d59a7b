"""Where the study database, managed storage and PACS node list live (below the data folder).

==========================  ===================================================
``<data>/studies/studies.sqlite``  the study index (SQLite, WAL)
``<data>/studies/storage/``        managed storage: imported copies and received instances,
                                   ``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
``<data>/studies/sources.json``    folders imported in place (to rebuild a damaged index)
``<data>/studies/preread/``        pre-read results of arrived studies, ``<StudyUID>/<SeriesUID>.json``
``<data>/pacs/nodes.json``         remote DICOM nodes and this workstation's listener identity
==========================  ===================================================

``XMEDGPT_HOME`` is honoured through :class:`app.core.paths.AppPaths`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from app.core.paths import AppPaths


@dataclass(frozen=True)
class StudyPaths:
    root: Path
    nodes_file: Path

    @property
    def database(self) -> Path:
        return self.root / "studies.sqlite"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def preread_results(self) -> Path:
        return self.root / "preread"

    @property
    def sources_file(self) -> Path:
        return self.root / "sources.json"

    @classmethod
    def detect(cls, paths: AppPaths | None = None) -> "StudyPaths":
        paths = paths or AppPaths.detect()
        return cls(root=paths.data / "studies", nodes_file=paths.data / "pacs" / "nodes.json")

    def has_studies(self) -> bool:
        """True when the study database lists at least one study. A read-only look: no database, one that
        cannot be read (the viewer's own opening repairs it) or an empty one is False."""
        if not self.database.is_file():
            return False
        try:
            with closing(sqlite3.connect(f"{self.database.as_uri()}?mode=ro", uri=True, timeout=2)) as conn:
                return conn.execute("SELECT 1 FROM studies LIMIT 1").fetchone() is not None
        except sqlite3.Error:
            return False

    def ensure(self) -> "StudyPaths":
        for d in (self.root, self.storage, self.nodes_file.parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self
