"""The emotion speech-LLM: a Llama-family causal LM over the stream vocabulary (DESIGN 3).

The model is a stock ``transformers`` decoder (``LlamaForCausalLM`` for the from-scratch
default; any Llama/Qwen-family checkpoint when extended), so LoRA, saving and device handling
are the library's, not ours. Emotion scoring is a softmax over the emotion tokens' logits at
an ``<audio_end>`` position; the label is never generated.

A model folder holds ``config.json`` + ``model.safetensors`` (save_pretrained), the text
tokenizer files, the speech tokenizer (``speech_tokenizer.*``), ``dpm_model.json`` (stream
vocabulary, trained context, history format) and ``dpm_manifest.json`` (written last, see
:mod:`dpm_worker.model.folder`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from dpm_worker.errors import ConfigError, LabelError, ModelError
from dpm_worker.model import folder as checkpoint
from dpm_worker.model.device import pick_device
from dpm_worker.model.vocab import StreamVocab
from dpm_worker.speech import (
    BuiltinSpeechTokenizer,
    SpeechTokenizer,
    SpeechTokenizerConfig,
    load_speech_tokenizer,
)
from dpm_worker.storage import is_remote

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


def default_model_path() -> Path:
    """The trained default model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "default_model"


def save_model(model: EmotionModel, uri: str, *, extra_files: dict[str, str] | None = None) -> None:
    """Save to a local folder or ``s3://`` prefix; complete only once the manifest lands.

    Args:
        model: the model to save.
        uri: the target folder.
        extra_files: more text files for the folder (name -> content), e.g. training records;
            they are covered by the manifest like every other file.
    """
    staged = checkpoint.staging_folder(uri)
    for name, text in (extra_files or {}).items():
        (staged / name).write_text(text)
    model.model.save_pretrained(str(staged))
    text_tokenizer = model.text_tokenizer or build_text_tokenizer(model.vocab)
    text_tokenizer.save_pretrained(str(staged))
    if not hasattr(model.speech_tokenizer, "save"):
        raise ModelError(
            f"speech tokenizer {type(model.speech_tokenizer).__name__} cannot be saved", uri
        )
    model.speech_tokenizer.save(staged)
    meta = {
        "format_version": 1,
        "model_id": model.model_id,
        "vocab": model.vocab.to_dict(),
        "max_context": model.max_context,
        "history_labels": model.history_labels,
    }
    (staged / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    checkpoint.commit_folder(staged, uri)


def load_model(
    uri: str | None = None,
    *,
    device: str | torch.device | None = None,
    endpoint_url: str | None = None,
    verify_weights: bool = False,
    dtype: str | torch.dtype | None = None,
) -> EmotionModel:
    """Load a model folder: the packaged default (None), a local path, or an ``s3://`` URI.

    Remote folders are copied once per node into ``~/.cache/dpm/models/`` (each downloaded
    file hashed in full) and reused while the remote manifest is unchanged. Every folder must
    match its manifest: sizes, edge hashes and the stored fingerprint by default, every byte
    with ``verify_weights``. Weights load from safetensors only, with ``trust_remote_code`` off.

    Args:
        uri: the model folder (None: the packaged default).
        device: a torch device (None: CUDA in bf16 when available, else CPU in fp32).
        endpoint_url: an explicit S3 endpoint (else the environment's).
        verify_weights: re-hash every file in full against the manifest (slow for big models).
        dtype: the backbone's dtype (None: bf16 on CUDA, else float32); the DPM memory's
            adapters stay float32 whatever the backbone's dtype.

    ``dtype`` (see :func:`pick_device`) casts the backbone, e.g. ``"bfloat16"`` on a CPU to
    check what a GPU run computes; None picks bf16 on CUDA and float32 elsewhere.

    Raises:
        ModelError: missing or mismatched files, or a vocabulary that does not fit the weights.
        ConfigError: an unknown dtype name.
    """
    source = str(default_model_path()) if uri is None else uri
    if is_remote(source):
        folder, _ = checkpoint.fetch_folder(
            source, endpoint_url=endpoint_url, full_hash=verify_weights
        )
        manifest = checkpoint.read_manifest(folder)  # fetch_folder verified the copy
    else:
        folder = Path(source)
        manifest = checkpoint.verify_folder(folder, full_hash=verify_weights)
    try:
        meta = json.loads((folder / MODEL_META).read_text())
        vocab = StreamVocab.from_dict(meta["vocab"])
    except FileNotFoundError:
        raise ModelError(f"{MODEL_META} is missing", source) from None
    except (json.JSONDecodeError, KeyError, ConfigError) as exc:
        raise ModelError(f"{MODEL_META} is invalid: {exc}", source) from exc
    torch_device, torch_dtype = pick_device(device, dtype)
    speech_tokenizer = load_speech_tokenizer(folder, device=torch_device)  # batches on the device
    if speech_tokenizer.vocab_size != vocab.n_audio:
        raise ModelError(
            f"speech tokenizer has {speech_tokenizer.vocab_size} codes, the vocabulary expects {vocab.n_audio}",
            source,
        )
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        )
        text_tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the causal LM: {exc}", source) from exc
    rows = int(model.get_input_embeddings().weight.size(0))  # type: ignore[operator]
    if rows < vocab.size or len(text_tokenizer) != vocab.size:
        raise ModelError(
            f"vocabulary of {vocab.size} tokens does not match the weights ({rows} rows) "
            f"or the tokenizer ({len(text_tokenizer)} tokens)",
            source,
        )
    expected = vocab.added_token_strings()
    if (
        text_tokenizer.convert_ids_to_tokens(list(range(vocab.audio_offset, vocab.size)))
        != expected
    ):
        raise ModelError(
            "tokenizer's added tokens are not the stream vocabulary's, in order", source
        )
    model = model.to(torch_device).eval().requires_grad_(False)  # type: ignore[arg-type]
    return EmotionModel(
        model=model,
        vocab=vocab,
        speech_tokenizer=speech_tokenizer,
        model_id=str(meta.get("model_id", folder.name)),
        fingerprint=manifest["fingerprint"],
        max_context=int(meta["max_context"]),
        device=torch_device,
        history_labels=str(meta.get("history_labels", "none")),
        text_tokenizer=text_tokenizer,
    )
