#!/usr/bin/env bash
# The GPU check: what a person with one CUDA GPU runs to see the real-scale path work.
#
#   infra/gpu_check.sh              on a machine with one GPU (target: under 8 minutes)
#   infra/gpu_check.sh --dry-run    the same steps on CPU with tiny shapes (target: < 3 min)
#   infra/gpu_check.sh --out DIR    keep the step outputs in DIR (default: a temp dir)
#
# Steps:
#   1. the tests marked `gpu` (tests/gpu/: bf16 backbone with fp32 memory, exact reset, only
#      adapters change, A then B = B alone, determinism, labeling throughput; the speech
#      encoder on CUDA against CPU int8 and its speed in bf16: `encoder` in the JSON);
#   2. `dpm bench throughput --device cuda --dtype bfloat16 [--slots 1,8,32]` in-process on a
#      random Llama of realistic shape (24 layers x 2048 wide);
#   3. the same bench on the packaged default model, in-process, and the default model through
#      the Ray job against the in-process loop;
#   4. end-to-end labeling: `dpm bench e2e --device cuda --dtype bfloat16` on the default model
#      through the Ray job (step 3's generated corpus) with 1 and 8 slots: audio-hours per hour
#      and where the time goes (decode, segment, encode, units, LLM, memory, write).
# `--slots` is passed only when the installed bench has it (an older install may not);
# otherwise the bench runs one conversation at a time and the JSON says so.
#
# Prints one JSON document on stdout (step logs go to DIR/*.log). Exit code: 0 when every
# step succeeded, 1 otherwise (the JSON still says which step failed and why).
#
# Configuration (environment): DPM_VENV_BIN (default: ./.venv/bin).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${DPM_VENV_BIN:-$here/.venv/bin}"
python="$bin/python"
dry_run=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: infra/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$(mktemp -d -t dpm-gpu-check-XXXXXX)}"
mkdir -p "$out"
cd "$here"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

if [ "$dry_run" = 1 ]; then
  # CPU with tiny shapes; the gpu-marked tests run on CPU instead of skipping.
  export CUDA_VISIBLE_DEVICES="" DPM_GPU_TESTS_ON_CPU=1
  device=cpu; shape=2x64; conversations=2; utterances=(--min-utterances 3 --max-utterances 4)
  slots=1,4; slot_utterances=3; e2e_slots=1,2
  ray_args=(--actors 1 --cpus-per-actor 1)
else
  device=cuda; shape=24x2048; conversations=6; utterances=(--min-utterances 10 --max-utterances 16)
  slots=1,8,32; slot_utterances=8; e2e_slots=1,8
  ray_args=(--actors 1 --gpus-per-actor 1)
  if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
    exit 1
  fi
fi

# Step 1: the gpu tests (junit XML is what the summary reads).
timeout 300 "$python" -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rA \
  --junitxml="$out/gpu_tests.xml" >"$out/gpu_tests.log" 2>&1
tests_rc=$?

# Steps 2-3: the throughput bench, with --slots only when the bench knows it (the batched
# engine per K, in-process); the default model also goes through the Ray job (one
# conversation per actor at a time against the in-process loop).
slots_args=()
if "$python" -m pipelines.cli bench throughput --help 2>/dev/null | grep -q -- "--slots"; then
  slots_args=(--slots "$slots" --utterances "$slot_utterances")
fi
bench=(-m pipelines.cli bench throughput --device "$device" --dtype bfloat16
       --conversations "$conversations" "${utterances[@]}")
timeout 420 "$python" "${bench[@]}" "${slots_args[@]}" --random-model "$shape" --in-process-only \
  --workdir "$out/random" >"$out/throughput_random.json" 2>"$out/throughput_random.log"
random_rc=$?
timeout 420 "$python" "${bench[@]}" "${slots_args[@]}" --in-process-only \
  --workdir "$out/default" >"$out/throughput_default.json" 2>"$out/throughput_default.log"
default_rc=$?
timeout 420 "$python" "${bench[@]}" "${ray_args[@]}" \
  --workdir "$out/default_ray" >"$out/throughput_default_ray.json" \
  2>"$out/throughput_default_ray.log"
ray_rc=$?

# Step 4: end to end through the Ray job, on the corpus step 3 generated (its own local Ray).
timeout 420 "$python" -m pipelines.cli bench e2e --corpus "$out/default_ray/corpus" \
  --models default --slots "$e2e_slots" --repeats 1 --device "$device" --dtype bfloat16 \
  "${ray_args[@]}" --workdir "$out/e2e" >"$out/e2e_default.json" 2>"$out/e2e_default.log"
e2e_rc=$?

"$python" - "$out" "$dry_run" "$tests_rc" "$random_rc" "$default_rc" "$ray_rc" "$e2e_rc" \
  "$start" "${slots_args[@]:+$slots}" <<'PY'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

out, dry_run = Path(sys.argv[1]), sys.argv[2] == "1"
tests_rc, random_rc, default_rc, ray_rc, e2e_rc, start = (int(x) for x in sys.argv[3:9])
slots = sys.argv[9] if len(sys.argv) > 9 else ""


def bench(name: str, rc: int) -> dict:
    try:
        return {"exit_code": rc, **json.loads((out / f"{name}.json").read_text())}
    except (OSError, ValueError):
        tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
        return {"exit_code": rc, "error": tail}


tests = {"exit_code": tests_rc, "passed": 0, "failed": [], "skipped": 0}
try:
    for case in ET.parse(out / "gpu_tests.xml").getroot().iter("testcase"):
        name = case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            tests["failed"].append(name)
        elif case.find("skipped") is not None:
            tests["skipped"] += 1
        else:
            tests["passed"] += 1
        for prop in case.iter("property"):
            tests[f"{name}.{prop.get('name')}"] = float(prop.get("value"))
except (OSError, ET.ParseError) as exc:
    tests["error"] = str(exc)
report = {
    "check": "gpu",
    "dry_run": dry_run,
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__,
    "slots": slots or "1 (this bench has no --slots yet)",
    "gpu_tests": tests,
    "throughput_random_llama": bench("throughput_random", random_rc),
    "throughput_default_model": bench("throughput_default", default_rc),
    "throughput_default_model_ray": bench("throughput_default_ray", ray_rc),
    "encoder": {
        k.removeprefix("test_encoder_speed."): v
        for k, v in tests.items()
        if k.startswith("test_encoder_speed.")
    },
    "e2e_default_model": bench("e2e_default", e2e_rc),
    "outputs": str(out),
    "wall_s": round(time.time() - start, 1),
}
print(json.dumps(report, indent=2))
sys.exit(0 if tests_rc == random_rc == default_rc == ray_rc == e2e_rc == 0 else 1)
PY
