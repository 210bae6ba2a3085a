#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster on this host (for the tests marked `slurm`); `stop` ends it again.
#
#   bash .ci/slurm.sh && source /tmp/dse-slurm.env     # munged, slurmctld, slurmd; SLURM_CONF for the clients
#   bash .ci/slurm.sh stop                             # stops the three daemons this script started
#
# Installs Debian's slurm-wlm (22.05) and munge when missing (needs root: the daemons run as root here, so jobs do
# too). Everything else lives in one folder ($DSE_SLURM_DIR, default /tmp/dse-slurm): the munge key and socket,
# slurm.conf, the daemons' state, logs and pid files; nothing under /etc is used, so a real cluster on the
# same machine is not touched. The ports ($DSE_SLURM_PORT and the next one) are away from SLURM's 6817/6818.
set -euo pipefail
DIR="${DSE_SLURM_DIR:-/tmp/dse-slurm}"
ENV_FILE="${DSE_SLURM_ENV:-/tmp/dse-slurm.env}"
PORT="${DSE_SLURM_PORT:-46817}"   # slurmctld; slurmd listens on PORT + 1
HOST="$(hostname -s)"
export SLURM_CONF="$DIR/slurm.conf"

stop() {  # only the daemons whose pid files are in our folder, and only if that pid is still that daemon
  local pid
  for d in slurmd slurmctld munged; do
    pid="$(cat "$DIR/$d.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$d" ] && kill "$pid"; then echo "stopped $d"; fi
    rm -f "$DIR/$d.pid"
  done
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then echo "slurm-wlm/munge are not installed and we are not root" >&2; return 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local mem   # MB; slurmd refuses a node that claims more memory than it has
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
  cat > "$SLURM_CONF" <<EOF
# written by .ci/slurm.sh: one node ($HOST) that is controller and compute node; no accounting database
ClusterName=dse-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# no cgroups in a container: processes are tracked by parent pid, tasks are not bound to cores
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# seconds: between SIGTERM and SIGKILL when a job is cancelled or preempted; finished jobs stay visible this long
KillWait=10
MinJobAge=600
SlurmdTimeout=60
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

write_env() {  # what the tests need: the clients' config, and the command that stops this cluster
  {
    echo "export SLURM_CONF=$SLURM_CONF"
    echo "export DSE_TEST_SLURM=$DIR"
    echo "export DSE_TEST_SLURM_STOP=\"DSE_SLURM_DIR=$DIR bash $(cd "$(dirname "$0")" && pwd)/slurm.sh stop\""
  } > "$ENV_FILE"
}

wait_idle() {  # the node registers within a few seconds (60 x 0.5 s at most); "$1": more states that will do
  for _ in $(seq 60); do
    if sinfo -h -N -n "$HOST" -o %t 2>/dev/null | grep -qxE "idle${1:-}"; then return 0; fi
    sleep 0.5
  done
  echo "SLURM node $HOST did not become idle; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  sinfo -N -l >&2 || true
  return 1
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
install
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null && wait_idle "|mix|alloc"; then
  echo "SLURM already running ($SLURM_CONF)"; write_env; exit 0
fi
stop
trap 'echo "SLURM did not start (logs in $DIR); stopping what was started" >&2; stop >&2' ERR
rm -rf "$DIR"; mkdir -p "$DIR/state" "$DIR/spool"; chmod 0755 "$DIR"  # munged: its socket folder must be searchable by all
dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none; chmod 0400 "$DIR/munge.key"
munged --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" --pid-file="$DIR/munged.pid" \
  --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed"
write_conf
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
wait_idle
write_env
echo "SLURM started: node $HOST idle, controller on 127.0.0.1:$PORT ($SLURM_CONF)"
