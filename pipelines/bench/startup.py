"""``dpm bench startup``: an actor's model start with the stored-hash check against a full hash.

Saves a random Llama with about ``--weights-mb`` MB of fp32 weights into a temporary folder
(``save_model``, which hashes every file once and stores the hashes), then starts two fresh
Python processes that each load it with ``load_model`` as a labeling actor does: one with the
default check (sizes, 64 KiB edge hashes, the stored fingerprint), one with
``verify_weights=True`` (every byte re-hashed). Each process times its own ``load_model`` call
(imports and transformers' lazy set-up excluded by loading the small packaged model first:
they cost the same on both sides) and its folder check alone. Both read
the files from the page cache (the folder was just written), so the full hash's cost here is
sha256 speed, a lower bound for a cold disk.

Printed JSON: ``weights_mb``, ``full_hash_s`` and ``start_s`` (the two ``load_model`` calls),
their ratio, and the folder checks alone (``verify_full_s``, ``verify_cheap_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpm_worker.errors import ConfigError

# One fresh process: time load_model and, separately, the folder check it starts with. The
# packaged default model is loaded first so transformers' lazy imports (seconds on a busy
# machine, the same on both sides) are not counted.
PROBE = """
import json, sys, time
import torch
torch.set_num_threads(1)
from dpm_worker.model import load_model
from dpm_worker.model.folder import verify_folder
load_model(device="cpu")
full = sys.argv[2] == "full"
start = time.perf_counter()
model = load_model(sys.argv[1], device="cpu", verify_weights=full)
loaded = time.perf_counter()
verify_folder(__import__("pathlib").Path(sys.argv[1]), full_hash=full)
checked = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "verify_s": checked - loaded,
                  "fingerprint": model.fingerprint}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights-mb", type=float, default=1000.0, help="target weight size")
    parser.add_argument("--hidden", type=int, default=2048, help="width of the random Llama")
    parser.add_argument("--workdir", help="where the model goes (default: a temp dir, removed)")


def layers_for(weights_mb: float, hidden: int) -> int:
    """Decoder layers whose fp32 weights come closest to ``weights_mb`` (Llama's MLP ratio)."""
    per_layer = 4 * hidden * hidden + 3 * hidden * (hidden * 8 // 3)
    return max(1, round(weights_mb * 1e6 / (4 * per_layer)))


def probe(folder: Path, mode: str) -> dict:
    repo = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import EmotionModel, save_model

    # head width about 128 as in Llama; a narrow test model gets one head
    heads = max(1, args.hidden // 128)
    if args.hidden < 2 or args.hidden % (2 * heads) or not args.weights_mb > 0:
        raise ConfigError(
            f"--hidden must split into {heads} heads of even width and --weights-mb must be "
            f"> 0, got {args.hidden} and {args.weights_mb}"
        )
    torch.set_num_threads(1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dpm-bench-startup-"))
    folder = workdir / "model"
    try:
        layers = layers_for(args.weights_mb, args.hidden)
        start = time.perf_counter()
        model = EmotionModel.random(hidden=args.hidden, layers=layers, heads=heads)
        save_model(model, str(folder))
        del model
        saved_s = time.perf_counter() - start
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        cheap = probe(folder, "cheap")
        full = probe(folder, "full")
        if cheap["fingerprint"] != full["fingerprint"]:
            raise RuntimeError("the two starts loaded different models")
        report = {
            "benchmark": "startup",
            "weights_mb": round(weights / 1e6, 1),
            "full_hash_s": round(full["load_s"], 3),
            "start_s": round(cheap["load_s"], 3),
            "ratio_full_over_start": round(full["load_s"] / cheap["load_s"], 2),
            "verify_full_s": round(full["verify_s"], 3),
            "verify_cheap_s": round(cheap["verify_s"], 4),
            "ratio_verify": round(full["verify_s"] / max(cheap["verify_s"], 1e-6), 1),
            "layers": layers,
            "hidden": args.hidden,
            "build_and_save_s": round(saved_s, 1),
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0
