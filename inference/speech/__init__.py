"""Speech recognition for push-to-talk dictation (Qt-free).

:mod:`.capture` records 16 kHz mono audio (microphone or WAV file),
:mod:`.engines` turns it into text with Whisper (faster-whisper or
openai-whisper), :mod:`.models` finds the weights (bundled tiny.en by
default), :mod:`.convert_ct2` converts CTranslate2 Whisper weights to an
openai-whisper checkpoint.
"""

from inference.speech.capture import (
    AudioDevice,
    AudioInputError,
    FileSource,
    MicrophoneRecorder,
    Recording,
    input_unavailable_reason,
    list_input_devices,
    read_wav,
    record_file,
    trim_silence,
)
from inference.speech.engines import (
    DEFAULT_ENGINE,
    ENGINES,
    FasterWhisperRecognizer,
    OpenAIWhisperRecognizer,
    Recognizer,
    SpeechEngineError,
    Transcript,
    make_recognizer,
)
from inference.speech.models import (
    SpeechModel,
    SpeechModelError,
    embedded_model_dir,
    locate_model,
)

__all__ = [
    "AudioDevice", "AudioInputError", "FileSource", "MicrophoneRecorder", "Recording",
    "input_unavailable_reason", "list_input_devices", "read_wav", "record_file", "trim_silence",
    "DEFAULT_ENGINE", "ENGINES", "FasterWhisperRecognizer", "OpenAIWhisperRecognizer", "Recognizer",
    "SpeechEngineError", "Transcript", "make_recognizer",
    "SpeechModel", "SpeechModelError", "embedded_model_dir", "locate_model",
]
