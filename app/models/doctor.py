"""``xmedgpt doctor``: what a support engineer needs to know about this workstation.

Each probe is small, never raises, and ends in plain words: what was found and,
for each feature (4-bit GPU inference, dictation, DICOM codecs, the models),
whether it will work and why not.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Feature:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    environment: dict[str, str] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"environment": self.environment, "features": [asdict(f) for f in self.features]}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi() -> tuple[str | None, str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None, "no NVIDIA driver found (nvidia-smi is not installed)"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi did not answer ({exc})"
    if out.returncode != 0:
        return None, f"nvidia-smi failed: {out.stderr.strip() or out.stdout.strip()}"
    return out.stdout.strip(), "ok"


def probe_gpu(report: Report) -> bool:
    smi, why = _nvidia_smi()
    report.environment["nvidia-smi"] = smi or why
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is a finding
        report.environment["torch"] = f"cannot be imported ({exc})"
        report.features.append(Feature("4-bit GPU inference", False, "PyTorch is not installed correctly."))
        return False
    report.environment["torch"] = f"{torch.__version__} (CUDA build {torch.version.cuda or 'none: CPU-only'})"
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        report.environment["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    else:
        report.environment["gpu"] = "none usable by PyTorch"
    bnb_version = _version("bitsandbytes")
    report.environment["bitsandbytes"] = bnb_version or "not installed"
    if not cuda:
        reason = (
            "no CUDA GPU is visible to PyTorch"
            + ("; the installed torch is a CPU build" if not torch.version.cuda else "")
            + (f" ({why})" if smi is None else "")
            + ". The assistant runs on the CPU (slow for 8B models; fine for the demo model)."
        )
        report.features.append(Feature("4-bit GPU inference", False, reason))
    elif not bnb_version:
        report.features.append(Feature("4-bit GPU inference", False, "bitsandbytes is not installed."))
    else:
        report.features.append(Feature("4-bit GPU inference", True,
                                       f"NF4 via bitsandbytes {bnb_version} on {report.environment['gpu']}"))
    return cuda


def probe_audio(report: Report) -> None:
    try:
        import sounddevice as sd
    except ImportError:
        report.features.append(Feature("dictation", False, "the sounddevice package is not installed."))
        return
    except OSError as exc:
        report.features.append(Feature("dictation", False, f"PortAudio is missing ({exc}); install libportaudio2."))
        return
    try:
        devices = sd.query_devices()
        inputs = [d["name"] for d in devices if d.get("max_input_channels", 0) > 0]
    except Exception as exc:  # noqa: BLE001
        report.features.append(Feature("dictation", False, f"audio devices cannot be listed ({exc})."))
        return
    report.environment["audio inputs"] = ", ".join(inputs) or "none"
    speech = importlib.util.find_spec("faster_whisper") is not None
    if not inputs:
        report.features.append(Feature("dictation", False, "no microphone (audio input device) was found."))
    elif not speech:
        report.features.append(Feature("dictation", False, "no speech recogniser is installed (faster-whisper)."))
    else:
        report.features.append(Feature("dictation", True, f"{len(inputs)} input device(s): {inputs[0]}"))


def probe_codecs(report: Report) -> None:
    try:
        from pydicom import uid
        from pydicom.pixels.decoders.base import get_decoder
    except Exception as exc:  # noqa: BLE001
        report.features.append(Feature("DICOM codecs", False, f"pydicom cannot be imported ({exc})."))
        return
    syntaxes = {
        "JPEG baseline": uid.JPEGBaseline8Bit, "JPEG extended": uid.JPEGExtended12Bit,
        "JPEG lossless": uid.JPEGLosslessSV1, "JPEG-LS": uid.JPEGLSLossless,
        "JPEG 2000": uid.JPEG2000, "RLE": uid.RLELossless, "deflated": uid.DeflatedExplicitVRLittleEndian,
    }
    missing = []
    for name, ts in syntaxes.items():
        dec = get_decoder(ts)
        if not dec.is_available:
            missing.append(name)
    plugins = [p for p in ("pylibjpeg", "gdcm") if importlib.util.find_spec(p)]
    report.environment["DICOM decoders"] = f"pydicom {_version('pydicom')}, plug-ins: {', '.join(plugins) or 'none'}"
    if missing:
        report.features.append(Feature("DICOM codecs", False,
                                       f"cannot decode {', '.join(missing)}: install pylibjpeg and python-gdcm."))
    else:
        report.features.append(Feature("DICOM codecs", True, ", ".join(syntaxes)))


def probe_models(report: Report) -> None:
    from app.models.registry import ModelRegistry
    from inference.resources import DEMO_MODEL_DIR

    reg = ModelRegistry()
    found = [f"{m.name} ({m.path})" for m in reg.models.values()]
    demo = (DEMO_MODEL_DIR / "config.json").is_file()
    report.environment["models registered"] = ", ".join(found) or "none"
    report.environment["embedded demo model"] = str(DEMO_MODEL_DIR) if demo else "not present"
    default = reg.default_model()
    if default and Path(default.path, "config.json").is_file():
        report.features.append(Feature("assistant model", True, f"default '{default.name}' at {default.path}"))
    elif default:
        report.features.append(Feature("assistant model", False,
                                       f"the default model folder {default.path} is missing."))
    elif demo:
        report.features.append(Feature("assistant model", True, "the embedded demo model (synthetic phantoms only)"))
    else:
        report.features.append(Feature("assistant model", False,
                                       "no model configured: add one with `xmedgpt models add DIR`."))


def run_doctor() -> Report:
    import psutil

    report = Report()
    env = report.environment
    env["os"] = f"{platform.system()} {platform.release()} ({platform.platform()})"
    env["python"] = f"{sys.version.split()[0]} at {sys.executable}"
    env["cpu"] = f"{_cpu_name()}, {os.cpu_count()} logical cores"
    env["ram"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    env["xmedgpt"] = _version("xmedgpt-workstation") or "source checkout"
    for probe in (probe_gpu, probe_audio, probe_codecs, probe_models):
        try:
            probe(report)
        except Exception as exc:  # noqa: BLE001 - doctor must always finish
            log.exception("probe %s failed", probe.__name__)
            report.features.append(Feature(probe.__name__.removeprefix("probe_"), False, f"check failed: {exc}"))
    return report


def format_report(report: Report) -> str:
    width = max(len(k) for k in report.environment) + 2
    lines = ["Environment"]
    lines += [f"  {k + ':':<{width}} {v}" for k, v in report.environment.items()]
    lines += ["", "Features"]
    lines += [f"  [{'ok' if f.ok else '--'}] {f.name}: {f.detail}" for f in report.features]
    return "\n".join(lines)
