from dpm_worker.speech.codebook_fit import fit_speech_tokenizer
from dpm_worker.speech.cosyvoice import (
    INSTALL_HINT,
    TOKENIZER_CONFIG,
    CosyVoiceTokenizer,
    CosyVoiceTokenizerConfig,
    build_model,
    fetch_weights,
    s3tokenizer_available,
)
from dpm_worker.speech.features import compute_block_features
from dpm_worker.speech.loading import load_speech_tokenizer
from dpm_worker.speech.tokenizer import BuiltinSpeechTokenizer, SpeechTokenizer
from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig
from dpm_worker.speech.utterances import FRAME_TOKENS, tokenize_utterances

__all__ = [
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
