# ---------------------------------------------------------------------------
# Fixed part (mixsweep/templates/ray_cluster.sh): no value from the sweep file
# appears below; they all come in through the quoted settings above.
#
# A Ray cluster inside this allocation: the head on the first node (this batch
# shell's node), one worker per other node (one srun step each, so a lost node
# takes only its own worker with it), the sweep driver on the head. Each node
# picks its own block of 200 ports below 32000 (under the kernel's ephemeral
# range): the first, from one derived from SLURM_JOB_ID, that no process on the
# node uses or has just reserved (two sweeps on one node never share a port).
# Ray's temp dir is per job and per node (/tmp may be shared by the nodes).
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

# pick_port_base: the first port of a free block of 200 on this node, from the block
# (SLURM_JOB_ID % 110) on, wrapping; all blocks lie in [10000, 32000). Free: no TCP
# socket on the node has a port in it, and no other job reserved it in the last 2
# minutes (a reservation covers the time between this choice and Ray binding the
# ports). The choice is made under a lock, so two jobs starting at once differ.
pick_port_base() {
  local dir=${MIXSWEEP_PORT_DIR:-/tmp/mixsweep-ports} fd used=' ' line port i b base f now
  mkdir -p "$dir" && chmod 1777 "$dir" 2>/dev/null || true
  [ -e "$dir/lock" ] || { : >>"$dir/lock" && chmod 0666 "$dir/lock"; } 2>/dev/null || true
  exec {fd}<"$dir/lock"
  flock -w 60 "$fd" || true
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    while read -r _ line _; do
      port=${line##*:}
      [[ $port =~ ^[0-9A-F]+$ ]] && used+="$((16#$port)) "
    done <"$f"
  done
  now=$(date +%s)
  for ((i = 0; i < 110; i++)); do
    b=$(((SLURM_JOB_ID + i) % 110)) base=$((10000 + b * 200))
    for f in "$dir/$base".*; do # reservations: <base>.<jobid>, mtime = when made
      [ -e "$f" ] && [ "$f" != "$dir/$base.$SLURM_JOB_ID" ] &&
        [ $((now - $(stat -c %Y "$f" 2>/dev/null || echo 0))) -lt 120 ] && continue 2
    done
    for port in $used; do
      [ "$port" -ge "$base" ] && [ "$port" -lt $((base + 200)) ] && continue 2
    done
    : >"$dir/$base.$SLURM_JOB_ID" 2>/dev/null || true
    exec {fd}<&-
    echo "$base"
    return 0
  done
  exec {fd}<&-
  echo "no free block of 200 ports in [10000, 32000) on $(hostname)" >&2
  return 1
}

release_ports() { rm -f "${MIXSWEEP_PORT_DIR:-/tmp/mixsweep-ports}/${PORT_BASE:-}.$SLURM_JOB_ID"; }

# ray_tmp_dir: Ray's temp dir on this node: per job and per node, short (Ray's socket
# paths must stay under 107 bytes).
ray_tmp_dir() {
  local host
  host=$(hostname -s 2>/dev/null || hostname)
  host=${host//[^A-Za-z0-9._-]/_}
  printf '/tmp/ray_%s_%s\n' "$SLURM_JOB_ID" "${host:0:20}"
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

# ray_worker: runs on each non-head node (the task of its srun step below). Ray's own
# output goes to a file beside its temp dir; a worker that fails says so in one line.
ray_worker() {
  local args out pid rc=0 stopping=0
  PORT_BASE=$(pick_port_base) || { log "ray worker on $(hostname) cannot join: no free ports"; return 0; }
  RAY_TMP=$(ray_tmp_dir)
  export PORT_BASE RAY_TMP
  mapfile -t args < <(ray_start_args)
  out=$RAY_TMP.out
  log "ray worker on $(hostname) ($(node_ip), ports $PORT_BASE+) joins $RAY_ADDRESS"
  (run_in "$PYTHON" -m ray.scripts.scripts start --address="$RAY_ADDRESS" "${args[@]}") >"$out" 2>&1 &
  pid=$!
  trap 'stopping=1; kill -TERM "$pid" 2>/dev/null || true' USR1 TERM INT
  while :; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  release_ports
  if [ "$stopping" = 0 ]; then
    log "ray worker on $(hostname) failed (exit $rc): $(grep -v '^[[:space:]]*$' "$out" | tail -n 1) (full output: $out on $(hostname))"
  else
    rm -rf "$RAY_TMP" "$out"
  fi
  return 0
}

# preflight_node: this node's check before it may take trials (`mixsweep selftest
# --preflight`: the device and a tiny step on each GPU, the data root and the runs folder,
# versions), bounded by MIXSWEEP_PREFLIGHT_TIMEOUT (default 180 s). Prints one line:
#   PREFLIGHT <host> <ok|fail> <mixsweep=V python=V> <reason>
preflight_node() {
  local out rc host ident verdict reason
  host=$(hostname -s 2>/dev/null || hostname)
  out=$(timeout --kill-after=10 "${MIXSWEEP_PREFLIGHT_TIMEOUT:-180}" \
    bash -c "$(declare -f run_in); run_in \"\$@\"" _ "$PYTHON" -m mixsweep.cli selftest --preflight \
    --sweep "$SPEC_FILE" 2>&1) && rc=0 || rc=$?
  ident=$(printf '%s\n' "$out" | sed -n 's/^preflight: host=[^ ]* \(mixsweep=[^ ]* python=[^ ]*\).*/\1/p' | tail -n 1)
  verdict=$(printf '%s\n' "$out" | grep -E '^(selftest|error): ' | tail -n 1)
  if [ "$rc" = 0 ]; then
    printf 'PREFLIGHT %s ok %s\n' "$host" "${ident:-mixsweep=? python=?}"
    return 0
  fi
  reason=${verdict:-$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 1)}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    reason="no answer within ${MIXSWEEP_PREFLIGHT_TIMEOUT:-180} s"
  fi
  printf 'PREFLIGHT %s fail %s exit %s: %s\n' "$host" "${ident:-mixsweep=? python=?}" "$rc" "${reason:-no output}"
}

# stop_ray: stop the Ray processes this script started, all at once, wait (KILL after
# 40 s), so that no Ray process outlives the job. The workers get USR1 through their
# srun (srun passes it on to the task; a TERM would make srun kill the task at once,
# leaving its temp dir behind), the head TERM.
stop_ray() {
  local pid i
  for pid in ${WORKERS_PID:-}; do kill -USR1 "$pid" 2>/dev/null || true; done
  if [ -n "${HEAD_PID:-}" ]; then kill -TERM "$HEAD_PID" 2>/dev/null || true; fi
  for pid in ${WORKERS_PID:-} ${HEAD_PID:-}; do
    for ((i = 0; i < 400; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  WORKERS_PID='' HEAD_PID=''
  release_ports
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

PORT_BASE=$(pick_port_base) || exit 1
RAY_TMP=$(ray_tmp_dir)
gres=()
[ "$NUM_GPUS" -gt 0 ] && gres=(--gres="gpu:$NUM_GPUS")
mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}")
HEAD_NODE=${NODES[0]}
export PYTHON CONTAINER NUM_CPUS NUM_GPUS
RAY_ADDRESS="$(node_ip):$PORT_BASE"
export RAY_ADDRESS RAY_USAGE_STATS_ENABLED=0
# Anyone who reaches a Ray port can run code as you: token auth with a fresh token
# per run, passed to head, workers (srun) and driver through the environment only.
# (Otherwise Ray picks up ~/.ray/auth_token for some processes and not others.)
if [ -z "${RAY_AUTH_MODE:-}" ]; then
  RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
fi

# Preflight: every node checks itself before Ray starts (the head here, the others in one
# srun step each, at once). A node that fails, does not answer, or runs another mixsweep
# or Python than the head is left out, named in one line; the sweep goes on with the rest.
# If the head fails (it holds the driver and the results), the job ends at once.
PF_DIR=$RAY_TMP.preflight
mkdir -p "$PF_DIR"
export SPEC_FILE
for node in "${NODES[@]:1}"; do
  timeout --kill-after=10 $((${MIXSWEEP_PREFLIGHT_TIMEOUT:-180} + 60)) \
    srun --nodes=1 --ntasks=1 --nodelist="$node" --cpus-per-task="$NUM_CPUS" ${gres[@]+"${gres[@]}"} \
    --kill-on-bad-exit=0 bash -c "$(declare -f run_in preflight_node); preflight_node" \
    >"$PF_DIR/$node" 2>/dev/null &
done
HEAD_PF=$(preflight_node)
wait
read -r _ _ head_status head_mixsweep head_python _ <<<"$HEAD_PF"
head_ident="$head_mixsweep $head_python"
if [ "$head_status" != ok ]; then
  log "preflight: the head node $HEAD_NODE failed (${HEAD_PF#PREFLIGHT * fail }): it runs the driver, so the job ends; fix it and launch again"
  stop_ray
  trap - EXIT
  exit 1
fi
GOOD_NODES=("$HEAD_NODE")
for node in "${NODES[@]:1}"; do
  line=$(grep '^PREFLIGHT ' "$PF_DIR/$node" 2>/dev/null | tail -n 1)
  read -r _ _ status node_mixsweep node_python _ <<<"$line"
  ident="$node_mixsweep $node_python"
  if [ -z "$line" ]; then
    log "preflight: node $node left out: no answer (srun could not run the check there)"
  elif [ "$status" != ok ]; then
    log "preflight: node $node left out: ${line#PREFLIGHT * fail }"
  elif [ "$ident" != "$head_ident" ]; then
    log "preflight: node $node left out: $ident there, $head_ident on the head"
  else
    GOOD_NODES+=("$node")
  fi
done
rm -rf "$PF_DIR"
log "preflight: ${#GOOD_NODES[@]} of $NNODES nodes passed (${GOOD_NODES[*]}; $head_ident)"

mapfile -t head_args < <(ray_start_args)
# The Ray Client server (default port 10001, shared by every job on a node) starts
# whenever ray[client] (grpc) is installed; give it this job's port then.
if (run_in "$PYTHON" -c 'import grpc') >/dev/null 2>&1; then
  head_args+=(--ray-client-server-port=$((PORT_BASE + 3)))
fi
log "ray head on $HEAD_NODE at $RAY_ADDRESS (ports $PORT_BASE+; $NUM_CPUS CPUs, $NUM_GPUS GPUs per node; temp dir $RAY_TMP)"
run_in "$PYTHON" -m ray.scripts.scripts start --head --port="$PORT_BASE" --include-dashboard=false \
  "${head_args[@]}" &
HEAD_PID=$!

# one srun step per other node that passed its preflight (a failed node ends only its own step); the function
# text travels as the command, the settings through the environment (srun exports it).
for node in "${GOOD_NODES[@]:1}"; do
  srun --nodes=1 --ntasks=1 --nodelist="$node" --cpus-per-task="$NUM_CPUS" ${gres[@]+"${gres[@]}"} \
    --kill-on-bad-exit=0 --no-kill \
    bash -c "$(declare -f log run_in node_ip pick_port_base release_ports ray_tmp_dir ray_start_args ray_worker); ray_worker" &
  WORKERS_PID+=" $!"
done

# wait until the head's GCS port accepts connections
for ((i = 0; i < 600; i++)); do
  (exec 3<>"/dev/tcp/${RAY_ADDRESS%:*}/$PORT_BASE") 2>/dev/null && break
  kill -0 "$HEAD_PID" 2>/dev/null || { log "ray head exited; see $RAY_TMP"; exit 1; }
  [ "$STOP" = 0 ] || break
  sleep 0.5
done

rc=0
if [ "$STOP" = 0 ]; then
  log "driver: mixsweep launch $SPEC_FILE --local --ray-address $RAY_ADDRESS --expect-nodes ${#GOOD_NODES[@]}"
  run_in "$PYTHON" -m mixsweep.cli launch "$SPEC_FILE" --local --ray-address "$RAY_ADDRESS" \
    --expect-nodes "${#GOOD_NODES[@]}" --join-timeout "${MIXSWEEP_JOIN_TIMEOUT:-120}" &
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
