#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (for tests/test_slurm.py and for trying the
# SLURM profiles by hand). Needs root and Debian/Ubuntu: installs `slurm-wlm` and `munge` with
# apt-get when they are missing, writes /etc/slurm/slurm.conf and gres.conf (refusing to touch
# a configuration it did not write: the executor's job steps call `srun` with SLURM_CONF
# removed from the environment, so the configuration must sit at the default path), keeps state
# and logs under $XEC_SLURM_DIR (default /tmp/xec-slurm), starts munged (unless one already
# answers), slurmctld and slurmd, and waits until `sinfo` shows the node idle.
#
#   scripts/slurm/start_cluster.sh
#   scripts/slurm/stop_cluster.sh             # stops the daemons, removes the configuration
#
# The cluster imitates one Grace-Hopper node: two partitions (CPU and GPU, names from
# XEC_SLURM_CPU_PARTITION / XEC_SLURM_GPU_PARTITION, defaults "cpu" and "gh" as in
# profiles/slurm-gh) on the same node, which advertises XEC_SLURM_NODE_CPUS CPUs (default 72)
# and one fake GPU generic resource gpu:$XEC_SLURM_GPU_MODEL:1 (default gh200) backed by
# /dev/null, so GPU requests (`--gpus=gh200:1`) schedule. The advertised CPUs/memory are
# accepted as configured (SlurmdParameters=config_overrides) so a profile's real per-rule
# requests fit. No accounting database: `sacct` does not work and the executor must use the
# `squeue` status command; MinJobAge is long so finished jobs stay visible to squeue. Every
# finished job is recorded in $XEC_SLURM_DIR/log/jobcomp.txt (jobcomp/filetxt).
#
# Exit codes: 0 ready; 3 this machine forbids it (not Linux, not root, neither SLURM nor apt-get,
# a foreign /etc/slurm/slurm.conf) — the message says why; 1 anything else (a failed apt-get,
# a daemon that does not come up: log tails printed).
set -euo pipefail

DIR=${XEC_SLURM_DIR:-/tmp/xec-slurm}
CPU_PART=${XEC_SLURM_CPU_PARTITION:-cpu}
GPU_PART=${XEC_SLURM_GPU_PARTITION:-gh}
GPU_MODEL=${XEC_SLURM_GPU_MODEL:-gh200}
NODE_CPUS=${XEC_SLURM_NODE_CPUS:-72}
NODE_MEM_MB=${XEC_SLURM_NODE_MEM_MB:-491520}
CTLD_PORT=${XEC_SLURM_CTLD_PORT:-6917}
SLURMD_PORT=${XEC_SLURM_SLURMD_PORT:-6918}
MIN_JOB_AGE=${XEC_SLURM_MIN_JOB_AGE:-900}
WAIT_S=${XEC_SLURM_WAIT_S:-120}

cannot() { echo "start_cluster: cannot run a test SLURM here: $*" >&2; exit 3; }

[ "$(uname -s)" = Linux ] || cannot "not Linux"
[ "$(id -u)" = 0 ] || cannot "not root (the daemons and apt-get need root)"

need_install=()
for exe in slurmctld slurmd sbatch squeue sinfo scontrol; do
  command -v "$exe" >/dev/null 2>&1 || { need_install+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || need_install+=(munge)
if [ ${#need_install[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || cannot "SLURM/munge missing and no apt-get to install ${need_install[*]}"
  echo "start_cluster: installing ${need_install[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || { echo "start_cluster: apt-get update failed" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null \
    || { echo "start_cluster: apt-get install ${need_install[*]} failed" >&2; exit 1; }
fi

mkdir -p "$DIR"
# ---- munge: reuse a running one, else start our own on the default socket ----------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    command -v mungekey >/dev/null 2>&1 || cannot "no /etc/munge/munge.key and no mungekey"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  echo started > "$DIR.munged-started"
  for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null || { echo "start_cluster: munged did not start" >&2; exit 1; }
fi

# ---- configuration ----------------------------------------------------------------------------
NODE=$(hostname -s)
CONF_DIR=/etc/slurm
MARKER="# xec one-node test cluster (scripts/slurm/start_cluster.sh)"
for f in slurm.conf gres.conf; do
  if [ -e "$CONF_DIR/$f" ] && [ "$(head -n1 "$CONF_DIR/$f")" != "$MARKER" ]; then
    cannot "$CONF_DIR/$f exists and was not written by this script (a real cluster?)"
  fi
done
mkdir -p "$CONF_DIR" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
cat > "$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=xectest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
# No accounting database: sacct is unavailable and squeue answers status queries, so finished
# jobs must stay in slurmctld's memory long enough (MinJobAge) for the executor to see them.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$GPU_MODEL:1 State=UNKNOWN
PartitionName=$CPU_PART Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PART Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
cat > "$CONF_DIR/gres.conf" <<EOF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu Type=$GPU_MODEL File=/dev/null
EOF
SLURM_CONF=$CONF_DIR/slurm.conf
unset SLURM_CONF_SERVER

dump_logs() {
  echo "--- slurmctld.log" >&2; tail -n 20 "$DIR/log/slurmctld.log" >&2 || true
  echo "--- slurmd.log" >&2; tail -n 20 "$DIR/log/slurmd.log" >&2 || true
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- daemons (stop leftovers of an earlier run of ours first) -----------------------------------
"$(dirname "$0")/stop_cluster.sh" --keep-munge >/dev/null 2>&1 || true
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
  if port_busy "$port"; then
    echo "start_cluster: port $port is in use (another SLURM? set XEC_SLURM_CTLD_PORT/XEC_SLURM_SLURMD_PORT)" >&2
    exit 1
  fi
done
: > "$DIR/log/slurmctld.log"; : > "$DIR/log/slurmd.log"
# from here on a failure stops what this script started
trap 'rc=$?; [ $rc = 0 ] || "$(dirname "$0")/stop_cluster.sh" --keep-munge >/dev/null 2>&1; exit $rc' EXIT
# -c: clean start, no saved jobs
slurmctld -c -f "$SLURM_CONF" || { echo "start_cluster: slurmctld failed to start" >&2; dump_logs; exit 1; }
slurmd -f "$SLURM_CONF" || { echo "start_cluster: slurmd failed to start" >&2; dump_logs; exit 1; }

deadline=$((SECONDS + WAIT_S))
state=""
while [ $SECONDS -lt $deadline ]; do
  state=$(sinfo -h -N -n "$NODE" -p "$CPU_PART" -o %T 2>/dev/null | head -n1 || true)
  case "$state" in
    idle) break ;;
    "") [ -s "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null \
          || { echo "start_cluster: slurmctld died" >&2; dump_logs; exit 1; } ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
if [ "$state" != idle ]; then
  echo "start_cluster: node $NODE not idle after ${WAIT_S}s (state: '${state:-none}')" >&2
  dump_logs; exit 1
fi
echo "start_cluster: ready: node $NODE idle, partitions $CPU_PART (default) and $GPU_PART, gres gpu:$GPU_MODEL:1" >&2
