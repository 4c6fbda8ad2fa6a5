"""``dpm synth``: generate the synthetic conversational emotion corpus (DESIGN section 6).

Writes ``OUT/manifest.parquet`` and ``OUT/audio/conv_NNNN.flac`` to a local folder or
``s3://bucket/prefix``. Every generator parameter and the seed are arguments; the same
arguments give the same bytes (whatever ``--workers``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import fields

import pyarrow as pa

from dpm_worker.corpus import (
    CODECS,
    CUE_MIXES,
    ENGINES,
    VOICE_FAMILIES,
    ChannelConfig,
    RandomizeConfig,
    SynthConfig,
    generate_corpus,
)
from dpm_worker.errors import ConfigError

# CLI flag -> SynthConfig field, for every generator parameter beyond --conversations/--seed.
_DEFAULTS = {f.name: f.default for f in fields(SynthConfig)}
_HELP = {
    "min_utterances": "fewest utterances in a conversation",
    "max_utterances": "most utterances in a conversation (counts uniform in between)",
    "expressive_prob": "probability that an utterance renders its mood in its prosody",
    "mood_stay": "probability that a speaker's mood stays on their next turn",
    "mood_pull": "when a mood changes, probability that it becomes the partner's mood",
    "switch_prob": "probability that the next turn goes to the other speaker",
    "min_gap_s": "shortest silence between turns (s)",
    "max_gap_s": "longest silence between turns (s)",
    "min_duration_s": "shortest utterance (s)",
    "max_duration_s": "longest utterance (s)",
    "baseline_spread": "scale of the speakers' baseline prosody spread (1: as large as emotion shifts)",
    "emotion_strength": "scale of the emotions' prosody shifts",
    "jitter": "scale of per-utterance random prosody variation",
    "female_prob": "probability that a speaker has a female voice",
    "noise_dbfs": "white noise floor level in dBFS (-140 for practically none)",
    "sample_rate": "output sample rate (Hz)",
    "long_turn_prob": "probability that a turn is long (longer than the default model's context)",
    "long_turn_min_s": "shortest long turn (s)",
    "long_turn_max_s": "longest long turn (s)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    parser.add_argument("--conversations", type=int, required=True, help="number of conversations")
    parser.add_argument("--seed", type=int, required=True, help="corpus seed (>= 0)")
    for name, help_text in _HELP.items():
        default = _DEFAULTS[name]
        kind = int if isinstance(default, int) else float
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            help=f"{help_text} (default {default})",
        )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="conversations rendered in parallel; does not change the output (default: min(2, CPUs))",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_randomize_arguments(parser)


# --randomize flag -> (RandomizeConfig or ChannelConfig field, parser of the value, help)
def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _range(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}")
    return parts[0], parts[1]


_RANDOMIZE_FLAGS = {
    "engines": (_names, f"engines to draw voices from, of {','.join(ENGINES)}"),
    "voice_families": (
        _names,
        "fnmatch patterns of allowed voice families, e.g. 'espeak:f*,festival:kal' "
        f"; known: {','.join(VOICE_FAMILIES)}",
    ),
    "cue_mixes": (_names, f"cue mixes to draw from, of {','.join(CUE_MIXES)}"),
    "cue_keep_prob": (float, "probability that a cue is present in the 'random' mix"),
    "gain_spread_db": (float, "half-width of the per-speaker recording gain (dB)"),
    "level_jitter_db": (float, "standard deviation of per-utterance loudness variation (dB)"),
}
_CHANNEL_FLAGS = {
    "telephone_prob": (float, "probability that a speaker's side is a telephone line (8 kHz)"),
    "codecs": (_names, f"telephone codecs, of {','.join(CODECS)}"),
    "noise_prob": (float, "probability of additive noise"),
    "snr_db": (_range, "LO,HI signal-to-noise ratio of the noise (dB)"),
    "reverb_prob": (float, "probability of room reverberation"),
    "rt60_s": (_range, "LO,HI reverberation time (s)"),
}


def add_randomize_arguments(parser: argparse.ArgumentParser) -> None:
    """``--randomize`` and the flags of the domain-randomized generator (issue 11)."""
    group = parser.add_argument_group("domain-randomized corpus (only with --randomize)")
    group.add_argument(
        "--randomize",
        action="store_true",
        help="several engines, per-conversation cues, post-synthesis prosody, varied channels",
    )
    defaults = {**vars(RandomizeConfig()), **vars(ChannelConfig())}
    for name, (kind, help_text) in {**_RANDOMIZE_FLAGS, **_CHANNEL_FLAGS}.items():
        default = defaults[name]
        shown = ",".join(map(str, default)) or "all" if isinstance(default, tuple) else default
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{help_text} (default {shown})",
        )


def randomize_from_args(args: argparse.Namespace) -> RandomizeConfig | None:
    """The randomized generator's config, or None without ``--randomize``."""
    given = [n for n in {**_RANDOMIZE_FLAGS, **_CHANNEL_FLAGS} if getattr(args, n) is not None]
    if not args.randomize:
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ConfigError(f"{flags} need --randomize")
        return None
    channel = ChannelConfig(
        **{n: getattr(args, n) for n in _CHANNEL_FLAGS if getattr(args, n) is not None}
    )
    values = {n: getattr(args, n) for n in _RANDOMIZE_FLAGS if getattr(args, n) is not None}
    return RandomizeConfig(channel=channel, **values)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The generator config named by the parsed arguments (validated)."""
    values = {name: getattr(args, name) for name in _HELP}
    return SynthConfig(
        conversations=args.conversations,
        seed=args.seed,
        randomize=randomize_from_args(args),
        **values,
    )


def summarize(table: pa.Table) -> dict:
    """Counts a user checks first: utterances, labels, expressive fraction, audio hours."""
    emotions = Counter(table.column("emotion").to_pylist())
    durations = [
        e - s
        for s, e in zip(
            table.column("start_s").to_pylist(), table.column("end_s").to_pylist(), strict=True
        )
    ]
    expressive = table.column("expressive").to_pylist()
    # a randomized corpus: how conversations spread over the split columns
    splits = {
        name: dict(sorted(Counter(table.column(name).to_pylist()).items()))
        for name in ("engine", "voice_family", "cue_mix")
        if name in table.column_names
    }
    return {
        "conversations": len(set(table.column("conversation_id").to_pylist())),
        "utterances": table.num_rows,
        "emotions": dict(sorted(emotions.items())),
        "expressive_fraction": round(sum(expressive) / max(1, len(expressive)), 4),
        "speech_hours": round(sum(durations) / 3600.0, 4),
        "mean_utterance_s": round(sum(durations) / max(1, len(durations)), 3),
        **{f"utterances_by_{name}": counts for name, counts in splits.items()},
        "longest_utterance_s": round(max(durations, default=0.0), 3),
    }


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    table = generate_corpus(
        args.out,
        config,
        workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(json.dumps({"out": args.out, **summarize(table)}, indent=2))
    return 0
