# ---------------------------------------------------------------------------
# Fixed part (mixsweep/templates/ray_cluster.sh): no value from the sweep file
# appears below; they all come in through the quoted settings above.
#
# A Ray cluster inside this allocation: the head on the first node (this batch
# shell's node), one worker per other node via srun, the sweep driver on the
# head. Ports come from SLURM_JOB_ID (two sweeps on one node never share one).
# --signal=B:USR1@grace sends USR1 to this shell before the time limit: the
# driver stops cleanly (finished trials stay, running ones keep their last
# epoch's checkpoint), Ray is stopped, and the job requeues itself; the next
# run resumes the sweep. `mixsweep cancel` sends USR2 to this shell: the same
# orderly stop, then the job cancels itself. scancel / scontrol requeue send
# TERM to every process at once: the driver still stops and resumes later.

log() { printf '[mixsweep %s] %s\n' "$(date '+%F %T')" "$*"; }

# run_in CMD...: exec CMD (in the apptainer image when slurm.container is set).
# It replaces the calling shell, so call it as `run_in ... &` or in ( ): then $!
# is the process itself and a TERM sent to $! reaches it.
run_in() {
  if [ -z "$CONTAINER" ]; then
    exec "$@"
  else
    local tool nv=()
    tool=$(command -v apptainer || command -v singularity) || {
      echo "slurm.container is set but neither apptainer nor singularity is on PATH" >&2
      return 127
    }
    [ "$NUM_GPUS" -gt 0 ] && nv=(--nv)
    exec "$tool" exec ${nv[@]+"${nv[@]}"} "$CONTAINER" "$@"
  fi
}

# node_ip: this node's first non-loopback IPv4 address (Ray must advertise one
# that the other nodes reach; Debian maps the hostname to 127.0.1.1).
node_ip() {
  local ip
  ip=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk '$1 !~ /^127\./ {print $1; exit}')
  [ -n "$ip" ] || ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  printf '%s\n' "${ip:-127.0.0.1}"
}

# ray_start_args: options shared by head and workers, one per line.
ray_start_args() {
  local shm
  printf '%s\n' --block --disable-usage-stats --node-ip-address="$(node_ip)" \
    --num-cpus="$NUM_CPUS" --num-gpus="$NUM_GPUS" --temp-dir="$RAY_TMP" \
    --node-manager-port=$((PORT_BASE + 1)) --object-manager-port=$((PORT_BASE + 2)) \
    --dashboard-agent-grpc-port=$((PORT_BASE + 4)) --dashboard-agent-listen-port=$((PORT_BASE + 5)) \
    --metrics-export-port=$((PORT_BASE + 6)) --runtime-env-agent-port=$((PORT_BASE + 7)) \
    --min-worker-port=$((PORT_BASE + 20)) --max-worker-port=$((PORT_BASE + 199))
  # The object store lives in /dev/shm: take 40% of what is free there (Ray
  # needs at least 75 MiB), so two jobs on one node both fit.
  shm=$(df -P -k /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
  if [ -n "$shm" ] && [ "$((shm * 1024 * 4 / 10))" -ge 78643200 ]; then
    printf '%s\n' --object-store-memory=$((shm * 1024 * 4 / 10))
  fi
}

# ray_worker: runs on each non-head node (a task of the srun step below).
ray_worker() {
  local args
  mapfile -t args < <(ray_start_args)
  log "ray worker on $(hostname) ($(node_ip)) joins $RAY_ADDRESS"
  run_in "$PYTHON" -m ray.scripts.scripts start --address="$RAY_ADDRESS" "${args[@]}"
}

# stop_ray: TERM the Ray processes this script started, wait (KILL after 30 s),
# so that no Ray process outlives the job.
stop_ray() {
  local pid i
  for pid in ${WORKERS_PID:-} ${HEAD_PID:-}; do
    kill -TERM "$pid" 2>/dev/null || continue
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  WORKERS_PID='' HEAD_PID=''
}

REQUEUE=0 CANCEL=0 STOP=0 DRIVER_PID='' HEAD_PID='' WORKERS_PID=''
stop_driver() { if [ -n "$DRIVER_PID" ]; then kill -TERM "$DRIVER_PID" 2>/dev/null || true; fi; }
on_usr1() {
  log "USR1: time limit or preemption in <= $GRACE_SECONDS s: stopping the sweep, then requeueing"
  REQUEUE=1 STOP=1
  stop_driver
}
on_usr2() { # `mixsweep cancel`: stop in order (driver, then Ray), then cancel the job
  log "USR2 (mixsweep cancel): stopping the sweep, then cancelling the job"
  CANCEL=1 STOP=1
  stop_driver
}
on_term() {
  # scancel / scontrol requeue / preemption: SLURM sends TERM to every process of
  # the job, the driver included. A second TERM would make Ray Tune skip its
  # last checkpoint, so do not forward it; just wait for the driver.
  log "TERM: cancelled, requeued or preempted by SLURM: the sweep stops"
  STOP=1
}
trap on_usr1 USR1
trap on_usr2 USR2
trap on_term TERM
trap 'STOP=1; stop_driver' INT
trap stop_ray EXIT

log "==== start: job ${SLURM_JOB_ID:?not inside a SLURM job} restart ${SLURM_RESTART_COUNT:-0}" \
  "on $(hostname), ${SLURM_JOB_NUM_NODES:-1} node(s): sweep $SWEEP"
cd "$WORKDIR"

PORT_BASE=$((10000 + (SLURM_JOB_ID % 250) * 200))
RAY_TMP=/tmp/ray_${SLURM_JOB_ID} # short: Ray's socket paths must stay under 107 bytes
HEAD_NODE=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" | head -n 1)
export PYTHON CONTAINER NUM_CPUS NUM_GPUS PORT_BASE RAY_TMP
RAY_ADDRESS="$(node_ip):$PORT_BASE"
export RAY_ADDRESS RAY_USAGE_STATS_ENABLED=0
# Anyone who reaches a Ray port can run code as you: token auth with a fresh token
# per run, passed to head, workers (srun) and driver through the environment only.
# (Otherwise Ray picks up ~/.ray/auth_token for some processes and not others.)
if [ -z "${RAY_AUTH_MODE:-}" ]; then
  RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
fi

mapfile -t head_args < <(ray_start_args)
# The Ray Client server (default port 10001, shared by every job on a node) starts
# whenever ray[client] (grpc) is installed; give it this job's port then.
if (run_in "$PYTHON" -c 'import grpc') >/dev/null 2>&1; then
  head_args+=(--ray-client-server-port=$((PORT_BASE + 3)))
fi
log "ray head on $HEAD_NODE at $RAY_ADDRESS ($NUM_CPUS CPUs, $NUM_GPUS GPUs per node, temp dir $RAY_TMP)"
run_in "$PYTHON" -m ray.scripts.scripts start --head --port="$PORT_BASE" --include-dashboard=false \
  "${head_args[@]}" &
HEAD_PID=$!

if [ "$NNODES" -gt 1 ]; then
  gres=()
  [ "$NUM_GPUS" -gt 0 ] && gres=(--gres="gpu:$NUM_GPUS")
  # one task per other node; the function text travels as the command, the settings
  # through the environment (srun exports it).
  srun --nodes=$((NNODES - 1)) --ntasks=$((NNODES - 1)) --ntasks-per-node=1 \
    --exclude="$HEAD_NODE" --cpus-per-task="$NUM_CPUS" ${gres[@]+"${gres[@]}"} --kill-on-bad-exit=0 \
    bash -c "$(declare -f log run_in node_ip ray_start_args ray_worker); ray_worker" &
  WORKERS_PID=$!
fi

# wait until the head's GCS port accepts connections
for ((i = 0; i < 600; i++)); do
  (exec 3<>"/dev/tcp/${RAY_ADDRESS%:*}/$PORT_BASE") 2>/dev/null && break
  kill -0 "$HEAD_PID" 2>/dev/null || { log "ray head exited; see $RAY_TMP"; exit 1; }
  [ "$STOP" = 0 ] || break
  sleep 0.5
done

rc=0
if [ "$STOP" = 0 ]; then
  log "driver: mixsweep launch $SPEC_FILE --local --ray-address $RAY_ADDRESS"
  run_in "$PYTHON" -m mixsweep.cli launch "$SPEC_FILE" --local --ray-address "$RAY_ADDRESS" &
  DRIVER_PID=$!
  # a trap interrupts `wait`; wait again until the driver has really exited
  while :; do
    wait "$DRIVER_PID" && rc=0 || rc=$?
    kill -0 "$DRIVER_PID" 2>/dev/null || break
  done
  log "driver exited with code $rc"
fi

stop_ray
if [ "$REQUEUE" = 1 ]; then
  log "==== requeueing job $SLURM_JOB_ID (the next run resumes the sweep)"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
if [ "$CANCEL" = 1 ]; then
  log "==== cancelling job $SLURM_JOB_ID (results stay; mixsweep launch resumes the sweep)"
  scancel "$SLURM_JOB_ID"
  exit 0
fi
[ "$rc" != 0 ] || rm -rf "$RAY_TMP" # keep Ray's logs when something failed
log "==== end: exit code $rc"
exit "$rc"
