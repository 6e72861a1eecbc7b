#!/usr/bin/env bash
# Fault probes for issue 7: how long each failure takes and what the user sees.
#
#   sudo TREE=/path/to/checkout bash benchmarks/fault_probes.sh [probe ...]   > probes.log
#
# Each probe runs the real `prefdesk` CLI from TREE (PYTHONPATH, so two checkouts can be
# compared with one venv) in a fresh PREFDESK_HOME, prints the seconds to fail, the exit
# status and the last lines the user saw. Needs root for the tmpfs mounts (read-only store,
# full disk); probes that need none run anywhere. Timings are wall-clock on whatever machine
# runs it: compare two trees in one go, not against numbers from elsewhere.
set -u
TREE=${TREE:-$(cd "$(dirname "$0")/.." && pwd)}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
WORK=${WORK:-/tmp/pd-probes-$$}
SECRET="s3cr3t-$$"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$TREE"
mkdir -p "$WORK"
TINY=(--set model.name=tiny --set model.dtype=fp32 --set train.params.max_steps=2 --set train.params.batch_size=2
      --set data.limit=8 --set eval.max_new_tokens=4 --set eval.max_prompts=2)

PD=("$PY" -m prefdesk.cli)

# probe NAME CMD...: time one command, show its tail and count the secret in everything it left
probe() {
  local name=$1; shift
  local dir="$WORK/$name"; mkdir -p "$dir"
  echo "=== $name"
  local t0=$(date +%s.%N)
  (cd "$TREE" && exec timeout -s KILL "${LIMIT:-900}" "$@") >"$dir/stdout" 2>"$dir/stderr"
  local rc=$?
  local t1=$(date +%s.%N)
  printf 'seconds: %.1f   exit: %s\n' "$(echo "$t1 - $t0" | bc)" "$rc"
  echo "--- stdout (last 3 lines)"; tail -n 3 "$dir/stdout" | cut -c1-400
  echo "--- stderr (last 6 lines)"; grep -v '^\s*$' "$dir/stderr" | tail -n 6 | cut -c1-400
  echo "--- stderr lines: $(wc -l <"$dir/stderr"), traceback: $(grep -c Traceback "$dir/stderr")"
}

mine() {  # pids of processes this probe started: their environment names its PREFDESK_HOME
  for e in /proc/[0-9]*/environ; do
    grep -q -a "PREFDESK_HOME=$1" "$e" 2>/dev/null && { p=${e#/proc/}; echo "${p%/environ}"; }
  done
}
reap_mine() { for p in $(mine "$1"); do [ "$p" != $$ ] && kill -KILL "$p" 2>/dev/null; done; true; }

secret_count() {  # where the secret ended up: outputs, files of the state folder
  local n
  n=$(cat "$WORK/$1/stdout" "$WORK/$1/stderr" | grep -a -c "$SECRET")
  echo "--- secret in stdout+stderr: $n lines; in files under $2: $(grep -r -a -l "$SECRET" "$2" 2>/dev/null | wc -l) files"
}

p_unreachable() {
  export PREFDESK_HOME="$WORK/h-unreach"
  MLFLOW_TRACKING_URI="http://alice:$SECRET@127.0.0.1:9/" probe unreachable "${PD[@]}" run --json "${TINY[@]}"
  secret_count unreachable "$PREFDESK_HOME"
}

p_unwritable() {  # the MLflow store on a read-only file system (root ignores chmod)
  local ro="$WORK/ro"; mkdir -p "$ro"
  mount -t tmpfs -o size=4m tmpfs "$ro" && mkdir -p "$ro/store" && mount -o remount,ro "$ro" || { echo "(no mount: skipped)"; return; }
  export PREFDESK_HOME="$WORK/h-unwritable"
  MLFLOW_TRACKING_URI="sqlite:///$ro/store/mlflow.db" probe unwritable "${PD[@]}" run --json "${TINY[@]}"
  umount "$ro"
}

p_settings() {
  export PREFDESK_HOME="$WORK/h-settings"
  probe optimizer_nope "${PD[@]}" run "${TINY[@]}" --set train.optimizer=nope
  probe beta_negative "${PD[@]}" run "${TINY[@]}" --set train.params.beta=-1
  probe gates_list "${PD[@]}" run "${TINY[@]}" --set 'gates=[1,2]'
  probe eval_batch_zero "${PD[@]}" run "${TINY[@]}" --set eval.batch_size=0
  probe json_error "${PD[@]}" run --json "${TINY[@]}" --set train.optimizer=nope
  # data.limit=-3 on 16 pairs: how many does `train` use?
  "$PY" - "$WORK/toy.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(16):
        f.write(json.dumps({"prompt": f"Tell me one thing about topic {i}.", "chosen": f"Sure, a calm fact about topic {i}.",
                            "rejected": f"NO!!! TOPIC {i} STOP!!!"}) + "\n")
EOF
  probe limit_negative "${PD[@]}" train --optimizer sft --data "$WORK/toy.jsonl" --json "${TINY[@]}" --set data.limit=-3
}

p_full_disk() {  # PREFDESK_HOME on a tiny file system; Prefect's own state elsewhere
  local full="$WORK/full"; mkdir -p "$full"
  mount -t tmpfs -o size=${FULL_SIZE:-600k} tmpfs "$full" || { echo "(no mount: skipped)"; return; }
  export PREFDESK_HOME="$full/home" PREFECT_HOME="$WORK/prefect-full"
  probe full_disk_1 "${PD[@]}" run --json "${TINY[@]}"
  probe full_disk_2 "${PD[@]}" run --json "${TINY[@]}"
  ls -la "$full/home" 2>/dev/null | head
  umount "$full"; unset PREFECT_HOME
}

p_sigterm() {  # SIGTERM while the run waits on an unreachable tracking server
  export PREFDESK_HOME="$WORK/h-sigterm"
  local after=${SIGTERM_AFTER:-120}
  echo "=== sigterm (sent $after s after start)"
  (cd "$TREE" && MLFLOW_TRACKING_URI="http://127.0.0.1:9/" exec "$PY" -m prefdesk.cli run "${TINY[@]}") >"$WORK/sigterm.out" 2>&1 &
  local pid=$!
  sleep "$after"; local t0=$(date +%s.%N); kill -TERM $pid
  local waited=0
  while kill -0 $pid 2>/dev/null && [ $waited -lt 240 ]; do sleep 1; waited=$((waited + 1)); done
  if kill -0 $pid 2>/dev/null; then echo "still running 240 s after SIGTERM: SIGKILL"; kill -KILL $pid; fi
  wait $pid; local rc=$?
  printf 'seconds from SIGTERM to exit: %.1f   exit: %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc"
  grep -v '^\s*$' "$WORK/sigterm.out" | tail -n 4 | cut -c1-300
  echo "--- processes left: $(mine "$PREFDESK_HOME" | grep -v "^$$\$" | xargs -r ps -o pid=,args= -p | cut -c1-120)"
  reap_mine "$PREFDESK_HOME"
}

p_sigterm_train() {  # SIGTERM while training: how long to exit, what stays RUNNING or alive
  export PREFDESK_HOME="$WORK/h-sigterm-train"
  echo "=== sigterm_train"
  local over=("${TINY[@]}" --set train.params.max_steps=100000 --set data.limit=64)
  (cd "$TREE" && exec "$PY" -m prefdesk.cli run "${over[@]}") >"$WORK/sigterm-train.out" 2>&1 &
  local pid=$!
  for _ in $(seq 900); do grep -q "Task run 'train" "$WORK/sigterm-train.out" 2>/dev/null && break; sleep 1; done
  sleep 10; local t0=$(date +%s.%N); kill -TERM $pid
  local waited=0
  while kill -0 $pid 2>/dev/null && [ $waited -lt 240 ]; do sleep 0.5; waited=$((waited + 1)); done
  kill -0 $pid 2>/dev/null && { echo "still running 120 s after SIGTERM: SIGKILL"; kill -KILL $pid; }
  wait $pid; local rc=$?
  printf 'seconds from SIGTERM to exit: %.1f   exit: %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc"
  grep -v '^\s*$' "$WORK/sigterm-train.out" | tail -n 3 | cut -c1-300
  sleep 5
  echo "--- processes left 5 s later:"; mine "$PREFDESK_HOME" | grep -v "^$$\$" | xargs -r ps -o pid=,args= -p | cut -c1-120
  "$PY" - "$PREFDESK_HOME" <<'EOF2'
import sqlite3, sys, pathlib
home = pathlib.Path(sys.argv[1])
print("--- MLflow runs:", sqlite3.connect(home / "mlflow.db").execute("select name, status from runs").fetchall())
print("--- Prefect flow runs:", sqlite3.connect(home / "prefect" / "prefect.db").execute("select name, state_type from flow_run").fetchall())
EOF2
  reap_mine "$PREFDESK_HOME"
}

p_kill9() {  # kill -9 during training, then what is left RUNNING; then the restart
  export PREFDESK_HOME="$WORK/h-kill9"
  echo "=== kill9"
  local over=("${TINY[@]}" --set train.params.max_steps=400 --set data.limit=64 --set 'gates.win_rate=null')
  (cd "$TREE" && exec "$PY" -m prefdesk.cli run "${over[@]}") >"$WORK/kill9.out" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do ls "$PREFDESK_HOME"/work/*/checkpoints 2>/dev/null | grep -q step && break; sleep 1; done
  kill -KILL $pid; wait $pid 2>/dev/null; sleep 3
  echo "--- processes left after kill -9 (orphans):"; mine "$PREFDESK_HOME" | grep -v "^$$\$" | xargs -r ps -o pid=,ppid=,args= -p | cut -c1-150
  "$PY" - "$PREFDESK_HOME" <<'EOF'
import sqlite3, sys, pathlib
home = pathlib.Path(sys.argv[1])
db = sqlite3.connect(home / "mlflow.db")
print("--- MLflow runs:", db.execute("select name, status from runs").fetchall())
p = home / "prefect" / "prefect.db"
if p.exists():
    print("--- Prefect flow runs:", sqlite3.connect(p).execute("select name, state_type from flow_run").fetchall())
EOF
  probe kill9_restart "${PD[@]}" run --json "${over[@]}" --set train.params.max_steps=40
  "$PY" - "$PREFDESK_HOME" <<'EOF'
import sqlite3, sys, pathlib
home = pathlib.Path(sys.argv[1])
print("--- MLflow runs after restart:", sqlite3.connect(home / "mlflow.db").execute("select name, status from runs").fetchall())
p = home / "prefect" / "prefect.db"
print("--- Prefect flow runs after restart:", sqlite3.connect(p).execute("select name, state_type from flow_run").fetchall())
EOF
  echo "--- processes left after the restart:"; mine "$PREFDESK_HOME" | grep -v "^$$\$" | xargs -r ps -o pid=,ppid=,args= -p | cut -c1-150
  reap_mine "$PREFDESK_HOME"
}

p_ui() {  # credentials on the command line, the UI's API port, SIGTERM to `prefdesk ui`
  export PREFDESK_HOME="$WORK/h-ui"
  echo "=== ui"
  (cd "$TREE" && MLFLOW_TRACKING_URI="postgresql://alice:$SECRET@127.0.0.1:9/db" exec "$PY" -m prefdesk.cli ui --prefect-port 4311 --mlflow-port 5011) >"$WORK/ui-a.out" 2>&1 &
  local pid=$! seen=0
  for _ in $(seq 60); do  # 30 s of `ps` samples
    n=$(ps -eo args= | grep -v grep | grep -c "$SECRET"); [ "$n" -gt "$seen" ] && seen=$n; sleep 0.5
  done
  echo "--- most processes at once whose argv (ps) held the secret: $seen"
  kill -TERM $pid 2>/dev/null; sleep 5; reap_mine "$PREFDESK_HOME"
  (cd "$TREE" && exec "$PY" -m prefdesk.cli ui --prefect-port 4311 --mlflow-port 5011) >"$WORK/ui.out" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -s --max-time 2 http://127.0.0.1:4311/api/health >/dev/null && break; sleep 1; done
  echo "--- UI settings api_url: $(curl -s --max-time 5 http://127.0.0.1:4311/ui-settings | grep -o '"api_url":"[^"]*"')"
  kill -TERM $pid; sleep 15
  echo "--- processes left 15 s after SIGTERM to ui:"; mine "$PREFDESK_HOME" | grep -v "^$$\$" | xargs -r ps -o pid=,args= -p | cut -c1-160
  reap_mine "$PREFDESK_HOME"
  grep -v '^\s*$' "$WORK/ui.out" | tail -n 3 | cut -c1-300
  "$PY" -c "import sqlite3,sys; print('--- experiment tags:', sqlite3.connect(sys.argv[1]).execute('select key, value from experiment_tags').fetchall())" "$PREFDESK_HOME/mlflow.db" 2>&1 | tail -1
}

for p in "${@:-unreachable unwritable settings full_disk sigterm kill9 ui}"; do
  for q in $p; do "p_$q"; done
done
