#!/usr/bin/env bash
# Tonight's labeling run on a standing Ray cluster, through `ray job submit`. Called by
# infra/cron/nightly.cron; safe to run by hand and to run twice.
#
#   infra/nightly.sh              submit (or resume, or just report on) tonight's run
#   infra/nightly.sh --dry-run    print what it would submit, touch nothing
#
# Configuration (environment; e.g. /etc/dpm/nightly.env sourced by the cron line):
#   DPM_INPUT         manifest URI, e.g. s3://corpus/manifests/current.parquet      (required)
#   DPM_OUTPUT        output prefix, e.g. s3://warehouse/emotion-tables             (required)
#   DPM_MODEL         model URI (default: the packaged model)
#   RAY_API_SERVER_ADDRESS  the cluster's job server, e.g. http://ray-head:8265     (required)
#   RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN): the cluster's token
#   DPM_NIGHTLY_DATE  the night to run (default: today, UTC) — set it to re-run a past night
#   DPM_NIGHTLY_FLAGS extra `dpm label` arguments (default: --incremental)
#   DPM_WORKING_DIR   code shipped with --working-dir (default: this repository)
#   DPM_NIGHTLY_REPORT 1 (default) writes DPM_OUTPUT/_reports/nightly-DATE.html after the run
#
# Identity: the run id is `nightly-DATE` (the tables' resume key) and every attempt gets its own
# submission id `dpm-label-DATE[-rN]` (Ray refuses to reuse one). If tonight's job already
# SUCCEEDED this exits 0 without submitting; if one is still RUNNING it follows its logs; if
# the last attempt FAILED it submits attempt N+1 with the same run id, which resumes it.
#
# Exit code: the label job's own (0 all labeled, 3 finished with rows in the errors table,
# 2 bad config/input, 1 failure), or 1 when the cluster cannot be reached.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${DPM_VENV_BIN:-$here/.venv/bin}"
ray="$bin/ray"
dry_run=0; [ "${1:-}" = "--dry-run" ] && dry_run=1

: "${DPM_INPUT:?set DPM_INPUT to the manifest URI}"
: "${DPM_OUTPUT:?set DPM_OUTPUT to the output prefix}"
: "${RAY_API_SERVER_ADDRESS:?set RAY_API_SERVER_ADDRESS to the job server, e.g. http://head:8265}"
export RAY_API_SERVER_ADDRESS
day="${DPM_NIGHTLY_DATE:-$(date -u +%F)}"
run_id="nightly-$day"
flags="${DPM_NIGHTLY_FLAGS---incremental}"
workdir="${DPM_WORKING_DIR:-$here}"
log() { echo "$(date -u +%FT%TZ) nightly $day: $*"; }

# Through Ray's job SDK (it reads RAY_API_SERVER_ADDRESS and the auth token like the CLI does):
# the job's status (PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED), or nothing when the id is unknown.
job_status() {
  "$bin/python" - "$1" <<'EOF' 2>/dev/null || true
import sys
from ray.job_submission import JobSubmissionClient
try:
    print(JobSubmissionClient().get_job_status(sys.argv[1]).value)
except RuntimeError:  # 404: no job with this submission id
    pass
EOF
}
# The label job's last line is "dpm label: exit N (...)": its exit code, even when Ray says FAILED.
label_exit() {
  "$ray" job logs "$1" 2>/dev/null | sed -n 's/^dpm label: exit \([0-9]\).*/\1/p' | tail -1 || true
}

attempt=1; submission="dpm-label-$day"
while :; do
  status="$(job_status "$submission")"
  case "$status" in
    "") break ;;  # no such job: submit this attempt
    SUCCEEDED) log "$submission already succeeded; nothing to do"; exit 0 ;;
    PENDING|RUNNING)
      log "$submission is $status; following it"
      [ "$dry_run" = 1 ] && exit 0
      "$ray" job logs --follow "$submission" || true
      break ;;
    *)
      code="$(label_exit "$submission")"
      if [ "$code" = 3 ]; then
        log "$submission finished with rows in the errors table (exit 3); run $run_id is committed"
        exit 3
      fi
      attempt=$((attempt + 1)); submission="dpm-label-$day-r$attempt"
      log "previous attempt $status (label exit ${code:-?}); next attempt $submission resumes $run_id" ;;
  esac
done

if [ -z "$(job_status "$submission")" ]; then
  runtime_env='{"excludes": [".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "demo_output"]}'
  # shellcheck disable=SC2206  # DPM_NIGHTLY_FLAGS is a word list on purpose
  entry=(python -m pipelines.label_corpus --input "$DPM_INPUT" --output "$DPM_OUTPUT"
         --run-id "$run_id" --address auto ${DPM_MODEL:+--model "$DPM_MODEL"} $flags)
  if [ "$dry_run" = 1 ]; then
    echo "$ray job submit --submission-id $submission --working-dir $workdir" \
         "--runtime-env-json '$runtime_env' -- ${entry[*]}"
    exit 0
  fi
  log "submitting $submission (run $run_id) to $RAY_API_SERVER_ADDRESS"
  # Blocks and streams the driver's progress lines into this script's log until the job ends.
  (cd "$workdir" && "$ray" job submit --submission-id "$submission" --working-dir . \
     --runtime-env-json "$runtime_env" -- "${entry[@]}") || true
fi

status="$(job_status "$submission")"
if [ -z "$status" ]; then
  log "no job $submission on $RAY_API_SERVER_ADDRESS: cluster unreachable or submission refused"
  exit 1
fi
code="$(label_exit "$submission")"
log "$submission ended $status, label exit ${code:-unknown}"
if [ "${DPM_NIGHTLY_REPORT:-1}" = 1 ] && [ "${code:-1}" != 1 ] && [ "${code:-1}" != 2 ]; then
  "$bin/dpm" report "$DPM_OUTPUT" --run-id "$run_id" --out "$DPM_OUTPUT/_reports/$run_id.html" \
    || log "report failed (the run itself is unaffected)"
fi
[ "$status" = SUCCEEDED ] && exit 0
exit "${code:-1}"
