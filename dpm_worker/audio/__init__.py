from dpm_worker.audio.decode import (
    SAMPLE_RATE,
    AudioInfo,
    clip_duration,
    cut_segment,
    encode_audio,
    probe_audio,
    read_recording,
    read_segment,
    write_audio,
)
from dpm_worker.audio.segments import SegmentsConfig, conversation_segments
from dpm_worker.audio.vad import detect_speech, split_at_quietest

__all__ = [
    "AudioInfo",
    "SAMPLE_RATE",
    "SegmentsConfig",
    "clip_duration",
    "conversation_segments",
    "cut_segment",
    "detect_speech",
    "encode_audio",
    "probe_audio",
    "read_recording",
    "read_segment",
    "split_at_quietest",
    "write_audio",
]
