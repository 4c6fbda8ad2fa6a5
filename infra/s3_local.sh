#!/usr/bin/env bash
# Start/stop the local S3 endpoint (moto's server) on 127.0.0.1 for development.
#   infra/s3_local.sh start [PORT] [BUCKET...]   prints the AWS_* variables to export
#   infra/s3_local.sh stop
#   infra/s3_local.sh status
# State (pid, log) lives in ${DPM_STATE_DIR:-/tmp/dpm-local}. Data is in memory only.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
state="${DPM_STATE_DIR:-/tmp/dpm-local}"
mkdir -p "$state"
pidfile="$state/s3.pid"; log="$state/s3.log"
case "${1:-}" in
  start)
    port="${2:-9000}"; shift $(( $# >= 2 ? 2 : $# ))
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "local S3 already running (pid $(cat "$pidfile"))"; exit 0; fi
    buckets=(); for b in "$@"; do buckets+=(--bucket "$b"); done
    PYTHONPATH="$here" nohup "$py" "$here/infra/s3_local.py" --port "$port" "${buckets[@]}" >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 50); do grep -q AWS_ENDPOINT_URL "$log" 2>/dev/null && break; sleep 0.2; done
    grep '^export' "$log" || { echo "local S3 failed to start; see $log" >&2; exit 1; } ;;
  stop)
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; echo stopped ;;
  status)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start [PORT] [BUCKET...] | stop | status" >&2; exit 2 ;;
esac
