#!/usr/bin/env bash
# Stop the one-node test cluster started by scripts/slurm/start_cluster.sh: slurmd and
# slurmctld by the pids they wrote under $XEC_SLURM_DIR, and munged only if start_cluster.sh
# started it (unless --keep-munge); then removes the /etc/slurm files that start_cluster.sh
# wrote (recognised by their first line). Never touches daemons or files it did not create.
set -uo pipefail
DIR=${XEC_SLURM_DIR:-/tmp/xec-slurm}
keep_munge=0
[ "${1:-}" = --keep-munge ] && keep_munge=1

stop_pid() {  # stop_pid NAME PIDFILE EXE: TERM, wait up to 10 s, then KILL
  local name=$1 pidfile=$2 exe=$3 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # only a live process running the expected executable
  # Debian runs the binaries as slurmctld-wlm/slurmd-wlm (alternatives links)
  if [ -d "/proc/$pid" ] && [[ "$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)")" == "$exe"* ]]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
    echo "stop_cluster: stopped $name (pid $pid)" >&2
  fi
  rm -f "$pidfile"
}

stop_pid slurmd "$DIR/run/slurmd.pid" slurmd
stop_pid slurmctld "$DIR/run/slurmctld.pid" slurmctld
if [ $keep_munge = 0 ] && [ -f "$DIR.munged-started" ]; then
  stop_pid munged /run/munge/munged.pid munged
  rm -f "$DIR.munged-started"
fi
MARKER="# xec one-node test cluster (scripts/slurm/start_cluster.sh)"
if [ $keep_munge = 0 ]; then   # --keep-munge is start_cluster.sh's restart: it rewrites the files
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    [ -f "$f" ] && [ "$(head -n1 "$f")" = "$MARKER" ] && rm -f "$f"
  done
fi
exit 0
