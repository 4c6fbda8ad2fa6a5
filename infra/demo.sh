#!/usr/bin/env bash
# `make demo`: generate a small synthetic conversation corpus and print its summary.
# (Replaced by the full labeling job once it lands.)
set -euo pipefail
out="${1:-demo_output}"
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/.venv/bin/dpm" synth --out "$out/corpus" --conversations 3 --seed 7 --min-utterances 12 --max-utterances 20
