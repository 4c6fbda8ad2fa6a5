"""Several speech synthesis engines behind one call, for the domain-randomized corpus.

Engines are the Debian packages ``espeak-ng``, ``flite`` and ``festival`` (with the voices
``festvox-kallpc16k``, ``festvox-kdlpc16k`` and ``festvox-us-slt-hts``). Each voice belongs to a
*voice family* (one speaker model: an espeak-ng variant, a flite or festival voice) so that a
corpus can be split by engine and by family. Engines differ in which prosody they control
natively: espeak-ng sets pitch, pitch range, rate and word gap; flite and festival set the rate,
and pitch level and range only for their diphone voices (``kal``, ``ked``); festival's HTS
voice (``slt``) has no native prosody control. Whatever an engine
cannot do is applied after synthesis by :mod:`dpm_worker.corpus.cues`, or is absent.

Every engine is run as a subprocess with every parameter explicit, so its output is a
deterministic function of the request. festival starts slowly (about 1 s), so its requests are
rendered in one ``festival --batch`` run per call of :func:`synthesize_requests`.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dpm_worker.corpus.synth_voices import ESPEAK_RATE, pitch_parameter
from dpm_worker.errors import AudioError, ConfigError

ENGINES: tuple[str, ...] = ("espeak", "flite", "festival")


@dataclass(frozen=True)
class EngineVoice:
    """One voice of one engine.

    Args:
        engine: ``espeak``, ``flite`` or ``festival``.
        name: the engine's voice name (an espeak-ng variant, ``""`` for its default).
        family: the speaker model, ``engine:name`` (held out as a unit).
        female: whether the voice is female.
        f0_hz: the voice's own median pitch (measured with the separability pitch tracker).
        level_dbfs: the voice's own speech level at unit gain (measured, rounded).
        native_pitch: the engine can set this voice's pitch level and range.
        native_rate: the engine can set this voice's speaking rate (festival's HTS voice
            ignores ``Duration_Stretch``).
    """

    engine: str
    name: str
    family: str
    female: bool
    f0_hz: float
    level_dbfs: float
    native_pitch: bool
    native_rate: bool = True


def _espeak_voices() -> tuple[EngineVoice, ...]:
    male = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7")
    female = ("f1", "f2", "f3", "f4", "f5")
    return tuple(
        EngineVoice("espeak", v, f"espeak:{v or 'm0'}", v in female, 190.0 if v in female else
                    105.0, -20.0, True)
        for v in male + female
    )  # fmt: skip


VOICES: tuple[EngineVoice, ...] = _espeak_voices() + (
    EngineVoice("flite", "kal16", "flite:kal", False, 91.0, -27.0, True),
    EngineVoice("flite", "awb", "flite:awb", False, 129.0, -19.0, False),
    EngineVoice("flite", "rms", "flite:rms", False, 104.0, -20.0, False),
    EngineVoice("flite", "slt", "flite:slt", True, 168.0, -15.0, False),
    EngineVoice("festival", "kal_diphone", "festival:kal", False, 104.0, -19.0, True),
    EngineVoice("festival", "ked_diphone", "festival:ked", False, 104.0, -18.0, True),
    EngineVoice(
        "festival", "cmu_us_slt_arctic_hts", "festival:slt", True, 172.0, -22.0, False, False
    ),
)
VOICE_FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(v.family for v in VOICES))


@dataclass(frozen=True)
class SynthRequest:
    """One utterance to render with an engine's native controls.

    Args:
        voice: the engine voice.
        text: the sentence.
        language: espeak-ng language (ignored by the other engines).
        f0_hz: target median pitch, used only when ``voice.native_pitch``.
        range_factor: pitch range multiplier, used only when ``voice.native_pitch``.
        rate_factor: speaking rate multiplier (1 = the voice's own rate), used only when
            ``voice.native_rate``.
        gap_10ms: extra pause between words (espeak-ng only; elsewhere done after synthesis).
    """

    voice: EngineVoice
    text: str
    language: str = "en-us"
    f0_hz: float | None = None
    range_factor: float = 1.0
    rate_factor: float = 1.0
    gap_10ms: int = 0


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, check=True, timeout=600).stdout
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{cmd[0]} is not installed (apt-get install -y espeak-ng flite festival "
            "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox)"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise AudioError(f"{cmd[0]} failed: {exc.stderr.decode(errors='replace')}", what) from exc


def _espeak(req: SynthRequest) -> tuple[np.ndarray, int]:
    variant = req.voice.name
    f0 = req.f0_hz if req.f0_hz is not None else req.voice.f0_hz
    pitch = min(99, max(0, pitch_parameter(variant, f0)))
    range_pct = int(round(min(200.0, max(5.0, 100.0 * req.range_factor))))
    voice = f"{req.language}+{variant}" if variant else req.language
    text = req.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    cmd = [
        "espeak-ng", "--stdout", "-m", "-z", "-b", "1", "-v", voice, "-p", str(pitch),
        "-s", str(int(round(min(400.0, max(90.0, 170.0 * req.rate_factor))))),
        "-a", "100", "-g", str(max(0, req.gap_10ms)),
        f'<speak><prosody range="{range_pct}%">{text}</prosody></speak>',
    ]  # fmt: skip
    out = _run(cmd, voice)
    # espeak-ng streams a WAV whose size fields are placeholders: read the PCM after "data".
    start = out.find(b"data")
    if start < 0:
        raise AudioError("espeak-ng produced no WAV data", voice)
    pcm = out[start + 8 :]
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0, (
        ESPEAK_RATE
    )


def _flite(req: SynthRequest, folder: Path) -> tuple[np.ndarray, int]:
    path = folder / "flite.wav"
    cmd = [
        "flite",
        "-voice",
        req.voice.name,
        "--setf",
        f"duration_stretch={1 / req.rate_factor:.4f}",
    ]
    if req.voice.native_pitch and req.f0_hz is not None:
        # flite's diphone voices take a target mean and spread of F0 (Hz); the voice's own
        # spread is about 20 Hz at its 91 Hz mean.
        std = 20.0 * req.f0_hz / req.voice.f0_hz * req.range_factor
        cmd += ["--setf", f"int_f0_target_mean={req.f0_hz:.2f}"]
        cmd += ["--setf", f"int_f0_target_stddev={std:.2f}"]
    _run([*cmd, "-t", req.text, "-o", str(path)], req.voice.family)
    audio, rate = sf.read(path, dtype="float32")
    return audio, int(rate)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(reqs: list[SynthRequest], folder: Path) -> list[tuple[np.ndarray, int]]:
    lines = []
    for i, req in enumerate(reqs):
        # Selecting the voice first resets every parameter a previous request changed.
        lines.append(f"(voice_{req.voice.name})")
        lines.append(f"(Parameter.set 'Duration_Stretch {1 / req.rate_factor:.4f})")
        if req.voice.native_pitch and req.f0_hz is not None:
            std = 34.0 * req.f0_hz / 170.0 * req.range_factor
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {req.f0_hz:.2f}) (target_f0_std "
                f"{std:.2f}) (model_f0_mean 170) (model_f0_std 34)))"
            )
        wav = _scheme_string(str(folder / f"fest_{i}.wav"))
        lines.append(
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(req.text)})) {wav} 'riff)"
        )
    script = folder / "batch.scm"
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "--batch", str(script)], "festival batch")
    out = []
    for i, req in enumerate(reqs):
        path = folder / f"fest_{i}.wav"
        if not path.exists():
            raise AudioError(f"festival wrote no audio for {req.text!r}", req.voice.family)
        audio, rate = sf.read(path, dtype="float32")
        out.append((audio, int(rate)))
    return out


def synthesize_requests(requests: list[SynthRequest], sample_rate: int) -> list[np.ndarray]:
    """Render every request; float32 mono at ``sample_rate``, silence trimmed, unit gain.

    Args:
        requests: the utterances (any mix of engines).
        sample_rate: output rate; each engine's own rate is resampled with soxr.

    Returns:
        The audio of each request, in order. Levels are the engine's own (not normalised).
    """
    rendered: dict[int, tuple[np.ndarray, int]] = {}
    with tempfile.TemporaryDirectory(prefix="dpm_engines_") as tmp:
        folder = Path(tmp)
        festival = [i for i, r in enumerate(requests) if r.voice.engine == "festival"]
        if festival:
            for i, out in zip(
                festival, _festival([requests[i] for i in festival], folder), strict=True
            ):
                rendered[i] = out
        for i, req in enumerate(requests):
            if req.voice.engine == "espeak":
                rendered[i] = _espeak(req)
            elif req.voice.engine == "flite":
                rendered[i] = _flite(req, folder)
            elif i not in rendered:
                raise ConfigError(f"unknown engine {req.voice.engine!r}; known: {ENGINES}")
    result = []
    for i in range(len(requests)):
        audio, rate = rendered[i]
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        if rate != sample_rate:
            audio = soxr.resample(audio, rate, sample_rate, quality="HQ")
        result.append(trim(np.asarray(audio, dtype=np.float32), sample_rate))
    return result


def trim(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence, keeping a 30 ms margin."""
    loud = np.flatnonzero(np.abs(audio) > 2e-3)
    if loud.size == 0:
        return audio
    margin = int(0.03 * sample_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin]


def select_voices(engines: tuple[str, ...], families: tuple[str, ...]) -> tuple[EngineVoice, ...]:
    """The voices of ``engines`` whose family matches one of ``families`` (fnmatch patterns;
    empty: all), in catalogue order.

    Raises:
        ConfigError: an unknown engine, or no voice left.
    """
    from fnmatch import fnmatchcase

    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engines {unknown}; known: {ENGINES}")
    voices = tuple(
        v
        for v in VOICES
        if v.engine in engines and (not families or any(fnmatchcase(v.family, f) for f in families))
    )
    if not voices:
        raise ConfigError(
            f"no voice of engines {engines} matches voice families {families}; "
            f"known families: {VOICE_FAMILIES}"
        )
    return voices


@lru_cache(maxsize=1)
def engine_versions() -> str:
    """The installed engines' versions (audio bytes are reproducible per version)."""
    found = []
    for cmd in (["espeak-ng", "--version"], ["flite", "--version"], ["festival", "--version"]):
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=30).stdout.decode(
                errors="replace"
            )
        except FileNotFoundError:
            out = "absent"
        lines = [line for line in out.splitlines() if "version:" in line] or [
            line for line in out.splitlines() if any(c.isdigit() for c in line)
        ]
        found.append(lines[0].split("Data at")[0].strip() if lines else cmd[0])
    return "; ".join(found)
