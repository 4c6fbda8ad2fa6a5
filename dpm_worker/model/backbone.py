"""The emotion speech-LLM: a Llama-family causal LM over the stream vocabulary (DESIGN 3).

The model is a stock ``transformers`` decoder (``LlamaForCausalLM`` for the from-scratch
default; any Llama/Qwen-family checkpoint when extended), so LoRA, saving and device handling
are the library's, not ours. Emotion scoring is a softmax over the emotion tokens' logits at
an ``<audio_end>`` position; the label is never generated.

Saving and loading model folders is :mod:`dpm_worker.model.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from dpm_worker.errors import ConfigError, LabelError, ModelError
from dpm_worker.model.acoustic_head import AcousticHead
from dpm_worker.model.calibration import Calibration
from dpm_worker.model.vocab import StreamVocab
from dpm_worker.speech import (
    BuiltinSpeechTokenizer,
    SpeechTokenizer,
    SpeechTokenizerConfig,
)

MODEL_META = "dpm_model.json"
# The few "text" tokens of a from-scratch model: it reads no text, but a pad id keeps
# batching and the tokenizer files conventional.
SCRATCH_TEXT_TOKENS = ("<pad>", "<s>", "</s>")
HISTORY_FORMATS = ("none", "predicted")


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of a from-scratch Llama backbone.

    Args:
        hidden_size: model width. The default model uses 192: the study's 160-wide model was
            capacity-bound on speaker calibration.
        num_layers: decoder layers. Reading a speaker's mood from earlier turns needs at least
            two hops (gather an utterance into its ``<audio_end>``, then attend from the current
            ``<audio_end>`` to the same speaker's earlier ones), so >= 2, better 4.
        num_heads: attention heads (hidden_size must divide evenly).
        intermediate_size: MLP width; 0 means ``hidden_size * 8 // 3`` (Llama's ratio).
        max_context: trained context length in tokens (RoPE works beyond it, accuracy does not).
        history_labels: ``none`` (emotion never in the stream) or ``predicted`` (an emotion token
            follows each history ``<audio_end>``).
        model_id: the name recorded in output tables.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 0
    max_context: int = 1024
    history_labels: str = "none"
    model_id: str = "dpm-random"

    def __post_init__(self) -> None:
        if self.hidden_size < 8 or self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(f"backbone too small: {self}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"hidden_size {self.hidden_size} must split into {self.num_heads} heads of even width"
            )
        if self.max_context < 16:
            raise ConfigError(f"max_context must be >= 16, got {self.max_context}")
        if self.history_labels not in HISTORY_FORMATS:
            raise ConfigError(
                f"history_labels must be one of {HISTORY_FORMATS}, got {self.history_labels!r}"
            )


def build_backbone(vocab: StreamVocab, config: BackboneConfig) -> transformers.LlamaForCausalLM:
    """A randomly initialised Llama over ``vocab`` (weights tied: the head doubles as the
    embedding, which halves a small model's size and gives emotion tokens an embedding that
    ``history_labels: predicted`` can feed back)."""
    llama_config = transformers.LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size or config.hidden_size * 8 // 3,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(llama_config)


def build_text_tokenizer(vocab: StreamVocab) -> transformers.PreTrainedTokenizerBase:
    """A word-level HF tokenizer whose ids are exactly the stream vocabulary's (scratch models)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    if vocab.text_size != len(SCRATCH_TEXT_TOKENS):
        raise ConfigError(
            f"a scratch vocabulary has text_size {len(SCRATCH_TEXT_TOKENS)}, got {vocab.text_size}"
        )
    names = list(SCRATCH_TEXT_TOKENS) + vocab.added_token_strings()
    core = Tokenizer(WordLevel({name: i for i, name in enumerate(names)}, unk_token="<pad>"))
    core.pre_tokenizer = WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@dataclass
class EmotionModel:
    """A loaded emotion SLLM: the causal LM, its stream vocabulary and speech tokenizer."""

    model: transformers.PreTrainedModel
    vocab: StreamVocab
    speech_tokenizer: SpeechTokenizer
    model_id: str
    fingerprint: str
    max_context: int
    device: torch.device
    history_labels: str = "none"
    text_tokenizer: Any = field(default=None, repr=False)
    # read beside the LLM and fused into every utterance's distribution (model/acoustic_head.py)
    acoustic_head: AcousticHead | None = None
    # a temperature on each utterance's emitted distribution (model/calibration.py)
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        if self.acoustic_head is not None:
            self.attach_head(self.acoustic_head)

    def attach_head(self, head: AcousticHead | None) -> None:
        """Read ``head`` beside the LLM from now on (None: no head); the speech tokenizer then
        gives every utterance its acoustic summary.

        Raises:
            ModelError: the head's labels are not the model's, or the tokenizer cannot
                summarize.
        """
        if head is not None:
            if head.labels != self.vocab.labels:
                raise ModelError(
                    f"acoustic head labels {head.labels} are not the model's {self.vocab.labels}",
                    self.model_id,
                )
            if not hasattr(self.speech_tokenizer, "quantize_with_summaries"):
                raise ModelError(
                    f"speech tokenizer {type(self.speech_tokenizer).__name__} gives no acoustic "
                    "summaries for an acoustic head",
                    self.model_id,
                )
        self.acoustic_head = head
        if hasattr(self.speech_tokenizer, "quantize_with_summaries"):
            self.speech_tokenizer.summaries = head is not None  # type: ignore[attr-defined]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.vocab.labels

    def emotion_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` LM logits -> ``[..., n_labels]`` restricted to the emotion tokens."""
        return logits[
            ..., self.vocab.emotion_offset : self.vocab.emotion_offset + len(self.vocab.labels)
        ]

    def emotion_probs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Emotion distribution at the last real position of each row (an ``<audio_end>``).

        Args:
            input_ids: ``[B, T]`` stream token ids.
            attention_mask: ``[B, T]``, 1 for real tokens; left or right padding both work.

        Returns:
            ``[B, n_labels]`` float32 probabilities.
        """
        input_ids = input_ids.to(self.device)
        if attention_mask is None or bool(attention_mask[:, -1].all()):
            mask = None if attention_mask is None else attention_mask.to(self.device)
            logits = self.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[
                :, -1
            ]
        else:
            mask = attention_mask.to(self.device)
            last = mask.shape[1] - 1 - mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)
            full = self.model(input_ids=input_ids, attention_mask=mask).logits
            logits = full[torch.arange(full.shape[0], device=full.device), last]
        return torch.softmax(self.emotion_logits(logits).float(), dim=-1)

    def check_labels(self, labels: tuple[str, ...] | list[str]) -> None:
        """Raise LabelError unless ``labels`` is exactly the model's emotion label set."""
        if tuple(labels) != self.vocab.labels:
            raise LabelError(
                f"label set {tuple(labels)} does not match the model's emotion tokens {self.vocab.labels}",
                self.model_id,
            )

    def check_fits(self, n_tokens: int, uri: str | None = None) -> None:
        """Raise ModelError when one utterance of ``n_tokens`` cannot fit the trained context."""
        if n_tokens > self.max_context:
            raise ModelError(
                f"segment of {n_tokens} tokens ({n_tokens / self.speech_tokenizer.rate_hz:.1f} s) exceeds "
                f"the model's context of {self.max_context} tokens",
                uri,
            )

    @classmethod
    def random(
        cls,
        vocab: StreamVocab | None = None,
        *,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        seed: int = 0,
        max_context: int = 1024,
        history_labels: str = "none",
    ) -> EmotionModel:
        """A tiny randomly initialised model with a random built-in speech tokenizer (tests)."""
        if vocab is None:
            vocab = StreamVocab(text_size=len(SCRATCH_TEXT_TOKENS), n_audio=32)
        tokenizer = BuiltinSpeechTokenizer.random(_product_shape(vocab.n_audio), seed=seed)
        config = BackboneConfig(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            max_context=max_context,
            history_labels=history_labels,
            model_id=f"dpm-random-{seed}",
        )
        torch.manual_seed(seed)
        model = build_backbone(vocab, config).eval().requires_grad_(False)
        return cls(
            model=model,
            vocab=vocab,
            speech_tokenizer=tokenizer,
            model_id=config.model_id,
            fingerprint=f"random-{seed}",
            max_context=max_context,
            device=torch.device("cpu"),
            history_labels=history_labels,
        )


def _product_shape(n_audio: int) -> SpeechTokenizerConfig:
    """A product-codebook shape with exactly ``n_audio`` codes (for random tokenizers)."""
    for n_energy, n_pitch in ((8, 16), (4, 8), (2, 4), (1, 2)):
        if n_audio % (n_energy * n_pitch) == 0:
            return SpeechTokenizerConfig(
                n_spectral=n_audio // (n_energy * n_pitch), n_energy=n_energy, n_pitch=n_pitch
            )
    raise ConfigError(f"a random built-in speech tokenizer needs an even n_audio, got {n_audio}")


def extend_base_model(
    path: str | Path, labels: tuple[str, ...], n_audio: int, n_speakers: int = 8
) -> tuple[transformers.PreTrainedModel, Any, StreamVocab]:
    """Load a Llama/Qwen-family checkpoint folder and extend its vocabulary in place.

    The stream tokens are appended after the text vocabulary (``add_tokens``), so their ids
    are ``len(tokenizer)`` onwards, exactly :class:`StreamVocab`'s layout with
    ``text_size = len(tokenizer)``; the embeddings (and untied head) are resized to match.

    Returns:
        ``(model, text_tokenizer, vocab)``.
    """
    folder = str(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model: {exc}", folder) from exc
    vocab = StreamVocab(
        text_size=len(tokenizer), n_audio=n_audio, labels=labels, n_speakers=n_speakers
    )
    names = vocab.added_token_strings()
    tokenizer.add_tokens(names, special_tokens=True)
    if tokenizer.convert_tokens_to_ids(names) != list(range(vocab.audio_offset, vocab.size)):
        raise ModelError(
            "the base tokenizer already holds some stream tokens (<audio_*>, <spk_*>, ...)", folder
        )
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer, vocab
