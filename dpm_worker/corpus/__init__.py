from dpm_worker.corpus.acted import ORDERS, conversation_order, order_conversation, parse_speakers
from dpm_worker.corpus.channel import CODECS, ChannelConfig, Line, apply_line, draw_line
from dpm_worker.corpus.cues import CUE_MIXES, CUES, CueProfile, draw_cue_profile
from dpm_worker.corpus.emovo import EMOVO_SPEAKERS, read_emovo
from dpm_worker.corpus.engines import (
    ENGINES,
    VOICE_FAMILIES,
    VOICES,
    EngineVoice,
    SynthRequest,
    select_voices,
    synthesize_requests,
)
from dpm_worker.corpus.iemocap import read_iemocap
from dpm_worker.corpus.labelled import read_labelled
from dpm_worker.corpus.layouts import (
    EMOVO_4CLASS,
    IEMOCAP_4CLASS,
    MELD_4CLASS,
    RAVDESS_4CLASS,
    RAVDESS_8CLASS,
    TUREV_4CLASS,
    load_mapping,
)
from dpm_worker.corpus.manifest import iter_conversations, read_manifest, resolve_audio, to_rows
from dpm_worker.corpus.manifest_checks import (
    UnknownLabelError,
    cast_manifest,
    check_columns,
    conversation_problems,
    row_problems,
    validate_manifest,
)
from dpm_worker.corpus.manifest_files import (
    MANIFEST_FILENAME,
    ManifestSource,
    count_manifest_rows,
    manifest_fingerprint,
    write_manifest,
)
from dpm_worker.corpus.meld import read_meld
from dpm_worker.corpus.moods import next_mood
from dpm_worker.corpus.randomized import RANDOMIZED_SCHEMA
from dpm_worker.corpus.ravdess import parse_actors, read_ravdess
from dpm_worker.corpus.recordings import AUDIO_EXTENSIONS, is_audio_name, recordings_manifest
from dpm_worker.corpus.rttm import format_rttm, parse_rttm, read_rttm
from dpm_worker.corpus.schema import (
    DEFAULT_LABELS,
    MANIFEST_SCHEMA,
    UNKNOWN_SPEAKER,
    SpeakerTurn,
    UtteranceRow,
)
from dpm_worker.corpus.synth import generate_corpus
from dpm_worker.corpus.synth_config import RandomizeConfig, SynthConfig
from dpm_worker.corpus.synth_voices import (
    EMOTION_SHIFTS,
    pitch_parameter,
    render_prosody,
    sample_speaker,
    synthesize,
)
from dpm_worker.corpus.turev import TUREV_SPEAKERS, read_turev

__all__ = [
    "MANIFEST_FILENAME",
    "AUDIO_EXTENSIONS",
    "is_audio_name",
    "recordings_manifest",
    "CODECS",
    "CUES",
    "CUE_MIXES",
    "ENGINES",
    "RANDOMIZED_SCHEMA",
    "VOICES",
    "VOICE_FAMILIES",
    "ChannelConfig",
    "CueProfile",
    "EngineVoice",
    "Line",
    "RandomizeConfig",
    "SynthRequest",
    "apply_line",
    "draw_cue_profile",
    "draw_line",
    "select_voices",
    "synthesize_requests",
    "DEFAULT_LABELS",
    "EMOTION_SHIFTS",
    "EMOVO_4CLASS",
    "EMOVO_SPEAKERS",
    "IEMOCAP_4CLASS",
    "MANIFEST_SCHEMA",
    "MELD_4CLASS",
    "ORDERS",
    "RAVDESS_4CLASS",
    "RAVDESS_8CLASS",
    "TUREV_4CLASS",
    "TUREV_SPEAKERS",
    "ManifestSource",
    "SpeakerTurn",
    "SynthConfig",
    "UNKNOWN_SPEAKER",
    "UnknownLabelError",
    "UtteranceRow",
    "cast_manifest",
    "check_columns",
    "conversation_problems",
    "conversation_order",
    "count_manifest_rows",
    "generate_corpus",
    "iter_conversations",
    "load_mapping",
    "manifest_fingerprint",
    "next_mood",
    "format_rttm",
    "order_conversation",
    "parse_rttm",
    "parse_actors",
    "parse_speakers",
    "pitch_parameter",
    "read_emovo",
    "read_iemocap",
    "read_manifest",
    "read_labelled",
    "read_meld",
    "read_ravdess",
    "read_rttm",
    "read_turev",
    "render_prosody",
    "resolve_audio",
    "row_problems",
    "sample_speaker",
    "synthesize",
    "to_rows",
    "validate_manifest",
    "write_manifest",
]
