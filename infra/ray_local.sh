#!/usr/bin/env bash
# A local single-node Ray cluster on 127.0.0.1 for development and integration tests.
#
#   infra/ray_local.sh start [--no-auth]   start the head; prints the `export` lines to use it
#   infra/ray_local.sh env                 print the `export` lines of the running cluster again
#   infra/ray_local.sh status              exit 0 if it runs and its job server answers
#   infra/ray_local.sh stop                stop THIS cluster only (never a machine-wide `ray stop`)
#
# Then, e.g.:
#   eval "$(infra/ray_local.sh start)"
#   ray job submit --working-dir . --submission-id demo-1 -- python -m pipelines.label_corpus ...
#   infra/ray_local.sh stop
#
# Everything the cluster owns lives in ${DPM_RAY_STATE_DIR:-/tmp/dpm-ray}: its Ray temp dir, log,
# pid, ports and auth token. Keep that path short: Ray puts unix sockets under it (108-byte limit).
# Several clusters can run side by side with different state dirs; all ports are picked free at
# start unless DPM_RAY_PORT / DPM_RAY_DASHBOARD_PORT fix the GCS and dashboard (job server) ports.
# Small fixed resources: DPM_RAY_CPUS (default 2), DPM_RAY_GPUS (0), DPM_RAY_OBJECT_STORE_MB (256).
#
# Token auth (Ray >= 2.52; on by default for local clusters since 2.59): the cluster gets its own
# token in $state/auth_token, never ~/.ray/auth_token, and clients find it through
# RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH, which the printed exports set. `--no-auth` starts the
# cluster with RAY_AUTH_MODE=disabled instead (loopback only; for debugging).
#
# Every listening socket (GCS, raylet, dashboard/job server, agents) binds 127.0.0.1. For that
# the exports also set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's switch for a loopback-only
# node; its name is historical): a driver that joins with ray.init must see it too.
#
# `stop` terminates the process group `ray start --block` ran in (started with setsid), then any
# process still referring to this cluster's temp dir, so other Ray clusters on the machine survive.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv_bin="${DPM_VENV_BIN:-$here/.venv/bin}"
py="$venv_bin/python"
state="${DPM_RAY_STATE_DIR:-/tmp/dpm-ray}"
pidfile="$state/ray.pid"; log="$state/ray.log"; envfile="$state/env.sh"
tmpdir="$state/t"; tokenfile="$state/auth_token"

alive() {  # kill -0 also succeeds on a zombie, so look at the process state
  local st; st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$st" ] && [ "${st:0:1}" != Z ]
}
running() { [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; }

# The job server (dashboard) answers /api/version once it can take `ray job submit`.
job_server_ready() {
  # shellcheck disable=SC1090
  . "$envfile"
  local header=()
  if [ "$RAY_AUTH_MODE" = token ]; then header=(-H "Authorization: Bearer $(cat "$tokenfile")"); fi
  curl -fsS -m 2 "${header[@]}" "$RAY_API_SERVER_ADDRESS/api/version" >/dev/null 2>&1
}

free_ports() {  # N free TCP ports on 127.0.0.1, held open together so they are distinct
  "$py" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start() {
  local auth=token
  [ "${1:-}" = "--no-auth" ] && auth=disabled
  if running; then cat "$envfile"; echo "# already running (pid $(cat "$pidfile"))" >&2; return 0; fi
  # Ray's deepest socket is $tmpdir/session_<date>_<time>_<us>_<pid>/sockets/plasma_store,
  # about 62 characters below $tmpdir; unix socket paths stop at 107.
  if [ "${#tmpdir}" -gt 45 ]; then
    echo "DPM_RAY_STATE_DIR is too long for Ray's unix sockets ($state); use e.g. /tmp/dpm-ray-1" >&2
    exit 2
  fi
  mkdir -p "$state"; rm -rf "$tmpdir"; mkdir -p "$tmpdir"
  read -r p_gcs p_dash p_client p_agent p_agent_grpc p_env p_metrics p_nm p_om p_asm p_dm \
    < <(free_ports 11)
  p_gcs="${DPM_RAY_PORT:-$p_gcs}"; p_dash="${DPM_RAY_DASHBOARD_PORT:-$p_dash}"
  if [ "$auth" = token ]; then
    (umask 077; "$py" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$tokenfile")
  else
    rm -f "$tokenfile"
  fi
  {
    echo "export RAY_ADDRESS=127.0.0.1:$p_gcs"                     # ray.init / dpm label --address
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$p_dash"  # ray job submit/status/logs
    echo "export RAY_AUTH_MODE=$auth"
    # Loopback-only node: without this Ray resolves 127.0.0.1 to the machine's routable IP,
    # where nothing of this cluster listens, and a driver's ray.init hangs.
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    [ "$auth" = token ] && echo "export RAY_AUTH_TOKEN_PATH=$tokenfile"
    echo "# dashboard: http://127.0.0.1:$p_dash"
  } >"$envfile"
  (
    # shellcheck disable=SC1090
    . "$envfile"
    unset RAY_ADDRESS  # `ray start --head` must not try to join anything
    # The job's entrypoint runs `python`: make that the venv's interpreter on this cluster.
    export PATH="$venv_bin:$PATH" RAY_USAGE_STATS_ENABLED=0
    # Fixed by default (44217, 44227): a second cluster on the machine would collide on them.
    export AUTOSCALER_METRIC_PORT="$p_asm" DASHBOARD_METRIC_PORT="$p_dm"
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 from env.sh: Ray replaces --node-ip-address=127.0.0.1
    # by the machine's routable IP unless multi-node clusters are off; with them off the node
    # and every address it hands out are loopback. No other node can join, which is the point.)
    setsid "$venv_bin/ray" start --head --block --disable-usage-stats \
      --node-ip-address=127.0.0.1 --port="$p_gcs" \
      --dashboard-host=127.0.0.1 --dashboard-port="$p_dash" --include-dashboard=true \
      --ray-client-server-port="$p_client" --dashboard-agent-listen-port="$p_agent" \
      --dashboard-agent-grpc-port="$p_agent_grpc" --runtime-env-agent-port="$p_env" \
      --metrics-export-port="$p_metrics" --node-manager-port="$p_nm" \
      --object-manager-port="$p_om" \
      --num-cpus="${DPM_RAY_CPUS:-2}" --num-gpus="${DPM_RAY_GPUS:-0}" \
      --object-store-memory=$(( ${DPM_RAY_OBJECT_STORE_MB:-256} * 1024 * 1024 )) \
      --temp-dir="$tmpdir" >"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
  # Dashboard start-up takes 10-30 s on a busy 2-core machine.
  for _ in $(seq "${DPM_RAY_START_TIMEOUT_S:-120}"); do
    if ! running; then echo "ray failed to start; see $log" >&2; tail -20 "$log" >&2; exit 1; fi
    if job_server_ready; then cat "$envfile"; return 0; fi
    sleep 1
  done
  echo "ray job server did not answer in time; see $log" >&2; stop >&2; exit 1
}

stop() {
  if [ -f "$pidfile" ]; then
    local pid; pid="$(cat "$pidfile")"
    # setsid made the `ray start` process a group leader: its group holds gcs, raylet, dashboard.
    kill -TERM -- "-$pid" 2>/dev/null || true
    # Give gcs, raylet and dashboard 3 s to exit cleanly (a raylet whose GCS is gone lingers;
    # `ray start --block` itself outlives its children on SIGTERM), then KILL the group.
    for _ in $(seq 6); do
      [ "$(ps -eo pgid=,pid=,stat= | awk -v g="$pid" '$1 == g && $2 != g && $3 !~ /^Z/' | wc -l)" = 0 ] && break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # Workers and agents may have left the group; they still name this cluster's temp dir.
  if [ -d "$tmpdir" ]; then
    "$py" - "$tmpdir" <<'EOF'
import sys, psutil
tmp = sys.argv[1]
procs = []
for p in psutil.process_iter(["pid", "cmdline"]):
    try:
        if any(tmp in part for part in (p.info["cmdline"] or [])) and p.pid != psutil.Process().pid:
            procs.append(p)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(procs, timeout=5)
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
EOF
  fi
  rm -f "$pidfile"
  echo "stopped ray cluster in $state"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  env) running || { echo "not running" >&2; exit 1; }; cat "$envfile" ;;
  status)
    if running && job_server_ready; then echo "running (pid $(cat "$pidfile"))"; grep '^# dash' "$envfile"
    else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start [--no-auth] | env | status | stop" >&2; exit 2 ;;
esac
