"""Model folders: the packaged default, saving, and loading (local or ``s3://``).

A model folder holds ``config.json`` + ``model.safetensors`` (save_pretrained), the text
tokenizer files, the speech tokenizer (``speech_tokenizer.*``), the acoustic head when the
model has one (``acoustic_head.*``), its calibration when it has one (``calibration.json``,
:mod:`dpm_worker.model.calibration`), ``dpm_model.json`` (stream vocabulary, trained context,
history format) and ``dpm_manifest.json`` (written last, see :mod:`dpm_worker.model.folder`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.model import folder as checkpoint
from dpm_worker.model.acoustic_head import load_acoustic_head
from dpm_worker.model.backbone import MODEL_META, EmotionModel, build_text_tokenizer
from dpm_worker.model.calibration import CALIBRATION_FILE, Calibration, load_calibration
from dpm_worker.model.device import pick_device
from dpm_worker.model.vocab import StreamVocab
from dpm_worker.speech import load_speech_tokenizer
from dpm_worker.storage import is_remote


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
    if model.acoustic_head is not None:
        model.acoustic_head.save(staged)
    if model.calibration is not None:
        model.calibration.save(staged)
    meta = {
        "format_version": 1,
        "model_id": model.model_id,
        "vocab": model.vocab.to_dict(),
        "max_context": model.max_context,
        "history_labels": model.history_labels,
    }
    (staged / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    checkpoint.commit_folder(staged, uri)


def save_calibrated(
    source: str | None,
    calibration: Calibration,
    uri: str,
    *,
    model_id: str | None = None,
    endpoint_url: str | None = None,
) -> None:
    """Copy a model folder to ``uri`` with ``calibration`` added (replacing one it had).

    Every other file is copied byte for byte (weights, head, card, records), so the copy's
    outputs differ from the source's only by the temperature; its fingerprint differs because
    the manifest covers ``calibration.json``.

    Args:
        source: the model folder (None: the packaged default), local or ``s3://``.
        calibration: what to add.
        uri: the new folder (local or ``s3://``), complete only once its manifest lands.
        model_id: a new model id for ``dpm_model.json`` (None: the source's).
        endpoint_url: an explicit S3 endpoint.

    Raises:
        ModelError: the source is not a complete model folder.
    """
    source = str(default_model_path()) if source is None else source
    if is_remote(source):
        folder, _ = checkpoint.fetch_folder(source, endpoint_url=endpoint_url)
    else:
        folder = Path(source)
        checkpoint.verify_folder(folder)
    staged = checkpoint.staging_folder(uri)
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in (checkpoint.MANIFEST_NAME, CALIBRATION_FILE):
            shutil.copyfile(path, staged / path.name)
    if model_id is not None:
        meta = json.loads((staged / MODEL_META).read_text())
        meta["model_id"] = model_id
        (staged / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    calibration.save(staged)
    checkpoint.commit_folder(staged, uri, endpoint_url=endpoint_url)


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
        acoustic_head=load_acoustic_head(folder),
        calibration=load_calibration(folder),
    )
