"""Model folders the workstation knows: check, register, choose the default.

``xmedgpt models add DIR`` checks a folder before it is used: the config must be
readable, the architecture supported (native transformers InternVL) or
convertible (original InternVL2 ``internvl_chat``, XMedGPT's own format, which
``xmedgpt convert-checkpoint`` turns into the native one); the weights' size and
SHA-256 are recorded so every AI output in the audit trail and in DICOM SR can
name the exact weights that produced it.

The registry is a JSON file under the data folder (``<data>/models/registry.json``),
written atomically. Folders are referenced where they are, never copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.core.errors import XMedError
from app.core.paths import AppPaths, set_aside, write_atomic

log = logging.getLogger(__name__)

NATIVE_ARCHITECTURES = {"InternVLForConditionalGeneration"}
CONVERTIBLE_ARCHITECTURES = {"InternVLChatModel"}
CONVERTIBLE_MODEL_TYPES = {"internvl_chat"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelFolderError(XMedError):
    """A folder that cannot be used as a model, with the reason."""


@dataclass
class ModelInfo:
    name: str
    path: str
    format: str  # "native" or "internvl_chat" (needs conversion)
    architecture: str
    model_type: str
    size_bytes: int
    weights_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # weight file → SHA-256
    added: str = ""

    @property
    def needs_conversion(self) -> bool:
        return self.format != "native"


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_digest(files: dict[str, str]) -> str:
    """One SHA-256 for a set of weight files: over the sorted ``name:sha256`` lines."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]}\n".encode())
    return h.hexdigest()


@dataclass
class ModelFolder:
    """What a model folder's config says and where its weights are (checked, not hashed)."""

    path: Path
    format: str  # "native" or "internvl_chat"
    architecture: str
    model_type: str
    weights: list[Path]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


def check_model_folder(folder: Path) -> ModelFolder:
    """Read and check ``folder``'s config and weights; :class:`ModelFolderError` with the reason."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"The model folder {folder} does not exist.")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is a file; choose the folder that holds config.json and the weights.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it has no config.json.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFolderError(f"The model's config.json in {folder} cannot be read ({exc}).") from exc
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type", ""))
    architecture = architectures[0] if architectures else ""
    if set(architectures) & NATIVE_ARCHITECTURES or model_type == "internvl":
        fmt = "native"
    elif set(architectures) & CONVERTIBLE_ARCHITECTURES or model_type in CONVERTIBLE_MODEL_TYPES:
        fmt = "internvl_chat"
    else:
        found = architecture or model_type or "unknown"
        raise ModelFolderError(
            f"{folder} holds a '{found}' model; XMedGPT Workstation runs InternVL models "
            "(native transformers format, or original InternVL2/XMedGPT checkpoints to convert)."
        )
    weights = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise ModelFolderError(f"{folder} has a config but no weight files (*.safetensors or *.bin).")
    return ModelFolder(folder, fmt, architecture, model_type, weights)


def inspect_model_folder(folder: Path, name: str | None = None,
                         progress: Callable[[str], None] | None = None) -> ModelInfo:
    """Check ``folder`` and describe it with the weights' SHA-256 (for the registry and the audit trail)."""
    checked = check_model_folder(folder)
    files: dict[str, str] = {}
    for p in checked.weights:
        rel = p.relative_to(checked.path).as_posix()
        if progress:
            progress(f"hashing {rel}")
        files[rel] = file_sha256(p)
    return ModelInfo(
        name=name or checked.path.name,
        path=str(checked.path.resolve()),
        format=checked.format,
        architecture=checked.architecture,
        model_type=checked.model_type,
        size_bytes=checked.size_bytes,
        weights_sha256=weights_digest(files),
        files=files,
        added=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


class ModelRegistry:
    """The registered model folders and which one is the default."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else AppPaths.detect().models / "registry.json"
        self.models: dict[str, ModelInfo] = {}
        self.default: str | None = None
        self.problems: list[str] = []
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.models = {m["name"]: ModelInfo(**m) for m in data.get("models", [])}
            self.default = data.get("default")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            moved = set_aside(self.path, str(exc))
            self.problems.append(f"The model list was damaged and has been kept as {moved.name}; it starts empty.")
            self.models, self.default = {}, None

    def save(self) -> None:
        payload = {"default": self.default, "models": [asdict(m) for m in self.models.values()]}
        write_atomic(self.path, json.dumps(payload, indent=2) + "\n")

    def add(self, folder: Path, name: str | None = None, progress: Callable[[str], None] | None = None) -> ModelInfo:
        info = inspect_model_folder(folder, name, progress)
        if info.name in self.models and self.models[info.name].path != info.path:
            raise ModelFolderError(
                f"A model named '{info.name}' is already registered ({self.models[info.name].path}); "
                "choose another name with --name."
            )
        self.models[info.name] = info
        if self.default is None and not info.needs_conversion:
            self.default = info.name
        self.save()
        return info

    def remove(self, name: str) -> ModelInfo:
        info = self.get(name)
        del self.models[name]
        if self.default == name:
            self.default = None
        self.save()
        return info

    def set_default(self, name: str) -> ModelInfo:
        info = self.get(name)
        if info.needs_conversion:
            raise ModelFolderError(
                f"'{name}' is an original InternVL2/XMedGPT checkpoint; convert it first with "
                f"xmedgpt convert-checkpoint {info.path} NEW_FOLDER, then add the new folder."
            )
        self.default = name
        self.save()
        return info

    def get(self, name: str) -> ModelInfo:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelFolderError(f"No model named '{name}' is registered (registered: {known}).")
        return self.models[name]

    def default_model(self) -> ModelInfo | None:
        return self.models.get(self.default) if self.default else None


def describe_size(info: ModelInfo) -> str:
    return _human_size(info.size_bytes)
