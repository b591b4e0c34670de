#!/usr/bin/env bash
# `make ui`: a local Prefect server (SQLite under .cache/prefect), the deployments of prefect.yaml,
# a process worker of the pool `local`, and the MLflow UI on the project's store (mlflow.db); prints
# their URLs and runs until Ctrl-C, which stops all of them. Logs: .cache/ui/*.log.
#   HOST=0.0.0.0 make ui                      # listen on every interface (default 127.0.0.1)
#   PREFECT_PORT=4300 MLFLOW_PORT=5001 make ui  # other ports (defaults 4200 and 5000)
# Needs prefect, mlflow and python on PATH (`make ui` puts .venv/bin first).
set -euo pipefail
set -m  # every background job in its own process group, so that stopping one stops its children

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HOST="${HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
POOL=local
case "$HOST" in
  0.0.0.0 | "::") LOCAL=127.0.0.1; PUBLIC="${PUBLIC_HOST:-$(hostname)}" ;;
  *) LOCAL="$HOST"; PUBLIC="${PUBLIC_HOST:-$HOST}" ;;
esac
for tool in prefect mlflow python; do
  command -v "$tool" >/dev/null || { echo "error: $tool not on PATH; run \`make ui\` (or activate .venv)" >&2; exit 1; }
done

LOGS="$ROOT/.cache/ui"
mkdir -p "$LOGS"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.cache/prefect}"
export PREFECT_API_URL="http://$LOCAL:$PREFECT_PORT/api"           # for the CLI, the worker and the flows
export PREFECT_UI_API_URL="http://$PUBLIC:$PREFECT_PORT/api"        # for the browser
export PREFECT_UI_URL="http://$PUBLIC:$PREFECT_PORT"                # links to flow runs
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}"
export TINYM2NET_MLFLOW_UI="http://$PUBLIC:$MLFLOW_PORT"            # links to MLflow runs
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$ROOT/.cache/numba}"
export DVC_NO_ANALYTICS=1

pids=()
stop() {
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C does not cut the cleanup short
  local i pid killer
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # worker first, then the servers
    pid="${pids[i]}"
    kill -TERM -- "-$pid" 2>/dev/null || continue
    (sleep 20; kill -KILL -- "-$pid" 2>/dev/null) &  # at most 20 s to stop gracefully
    killer="$!"
    wait "$pid" 2>/dev/null || true
    kill -KILL -- "-$killer" "-$pid" 2>/dev/null || true
  done
  rm -f "$LOGS/pgids"
}
trap stop EXIT
trap 'exit 130' INT TERM

start() {  # start <name> <command...>: in the background, output in .cache/ui/<name>.log
  local name="$1"; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=("$!")
  echo "$!" >>"$LOGS/pgids"
}

wait_for() {  # wait_for <url> <name> <pid>: until the URL answers (at most 180 s) or the process died
  local url="$1" name="$2" pid="$3"
  for _ in $(seq 1 180); do
    if python - "$url" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
EOF
    kill -0 "$pid" 2>/dev/null || { echo "error: $name exited; see $LOGS/$name.log" >&2; tail -20 "$LOGS/$name.log" >&2; exit 1; }
    sleep 1
  done
  echo "error: $name did not answer at $url within 180 s; see $LOGS/$name.log" >&2
  exit 1
}

# MLflow answers only to known Host headers (DNS-rebinding protection): on every interface, also
# to this machine's name (MLFLOW_SERVER_ALLOWED_HOSTS overrides).
if [[ "$LOCAL" != "$HOST" && -z "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ]]; then
  MLFLOW_SERVER_ALLOWED_HOSTS="$(python -c 'from mlflow.server.security_utils import get_default_allowed_hosts as d; print(",".join(d()))'),$PUBLIC,$PUBLIC:*"
  export MLFLOW_SERVER_ALLOWED_HOSTS
fi
# The UI needs no background job runner (MLflow's GenAI jobs: a dozen extra processes).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

rm -f "$LOGS/pgids"
echo "starting the Prefect server and the MLflow UI (logs in $LOGS)..."
start mlflow mlflow server --backend-store-uri "$MLFLOW_TRACKING_URI" --artifacts-destination "$ROOT/mlartifacts" \
  --host "$HOST" --port "$MLFLOW_PORT" --workers 1
mlflow_pid="$!"
start prefect-server prefect server start --host "$HOST" --port "$PREFECT_PORT"
wait_for "$PREFECT_API_URL/health" prefect-server "$!"

prefect --no-prompt work-pool create "$POOL" --type process --overwrite >"$LOGS/deploy.log" 2>&1
if ! python scripts/deploy.py >>"$LOGS/deploy.log" 2>&1; then  # prefect deploy --all (see the script)
  echo "error: registering the deployments of prefect.yaml failed:" >&2
  tail -30 "$LOGS/deploy.log" >&2
  exit 1
fi
start worker prefect worker start --pool "$POOL" --type process
wait_for "http://$LOCAL:$MLFLOW_PORT/health" mlflow "$mlflow_pid"

cat <<EOF

  Prefect UI  http://$PUBLIC:$PREFECT_PORT   deployments: pipeline/nightly (02:00 UTC), pipeline/weekly-benchmark (Mon 04:00 UTC), sweep/grid
  MLflow UI   http://$PUBLIC:$MLFLOW_PORT   store: $MLFLOW_TRACKING_URI
  Worker      pool '$POOL' (process), runs flows in $ROOT

  Run now:  PREFECT_API_URL=$PREFECT_API_URL prefect deployment run pipeline/nightly
  Ctrl-C stops the server, the worker and the MLflow UI.
EOF

set +e
wait -n "${pids[@]}"
echo "error: a process exited; see $LOGS/*.log" >&2
exit 1
