from dpm_worker.speech.codebook_fit import (
    fit_encoder_tokenizer,
    fit_speech_tokenizer,
    refit_summary,
)
from dpm_worker.speech.cosyvoice import (
    INSTALL_HINT,
    TOKENIZER_CONFIG,
    CosyVoiceTokenizer,
    CosyVoiceTokenizerConfig,
    build_model,
    fetch_weights,
    s3tokenizer_available,
)
from dpm_worker.speech.encoder import SpeechEncoder, log_mel, mel_filters
from dpm_worker.speech.encoder_queue import EncoderQueue
from dpm_worker.speech.encoder_tokenizer import KIND as ENCODER_KIND
from dpm_worker.speech.encoder_tokenizer import EncoderTokenizer, EncoderTokenizerConfig
from dpm_worker.speech.encoder_weights import (
    ENCODERS,
    WHISPER_BASE,
    EncoderWeights,
    encoder_folder,
    encoder_weights,
)
from dpm_worker.speech.features import compute_block_features
from dpm_worker.speech.loading import load_speech_tokenizer
from dpm_worker.speech.tokenizer import BuiltinSpeechTokenizer, SpeechTokenizer
from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig
from dpm_worker.speech.utterances import FRAME_TOKENS, tokenize_utterances

__all__ = [
    "ENCODERS",
    "ENCODER_KIND",
    "EncoderQueue",
    "EncoderTokenizer",
    "EncoderTokenizerConfig",
    "EncoderWeights",
    "SpeechEncoder",
    "WHISPER_BASE",
    "encoder_folder",
    "encoder_weights",
    "fit_encoder_tokenizer",
    "refit_summary",
    "log_mel",
    "mel_filters",
    "BuiltinSpeechTokenizer",
    "CosyVoiceTokenizer",
    "CosyVoiceTokenizerConfig",
    "FRAME_TOKENS",
    "INSTALL_HINT",
    "SpeechTokenizer",
    "SpeechTokenizerConfig",
    "TOKENIZER_CONFIG",
    "build_model",
    "compute_block_features",
    "fetch_weights",
    "fit_speech_tokenizer",
    "load_speech_tokenizer",
    "s3tokenizer_available",
    "tokenize_utterances",
]
