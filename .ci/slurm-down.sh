#!/bin/bash
# Stop the local Slurm by PID: cancel jobs, slurmd, slurmctld; munged too with "all". Idempotent.
# "slurm-down.sh controller" stops only slurmctld (jobs, slurmd, munged keep running; state is saved):
# a controller outage; "slurm-up.sh controller" brings it back.
export SLURM_CONF=${SLURM_CONF_DIR:-/etc/slurm}/slurm.conf
# /proc instead of ps (procps may be missing on a minimal image); kill -0 succeeds on zombies,
# so "alive" means: the process exists and its state is not Z.
proc_stat() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null; }   # fields after comm: state ppid ...
alive() { local s; s=$(proc_stat "$1") || return 1; set -- $s; [ -n "${1:-}" ] && [ "$1" != Z ]; }
children() {   # pids whose parent is $1
  awk -v parent="$1" '{ sub(/.*\) /, ""); split($0, f, " "); if (f[2] == parent) { split(FILENAME, p, "/"); print p[3] } }' \
    /proc/[0-9]*/stat 2>/dev/null
}
pids_named() { grep -lxs "$1" /proc/[0-9]*/comm | cut -d/ -f3; }
stop_pidfile() {   # name pidfile
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if alive "$pid"; then
    kill -TERM "$pid"
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { echo "$1 ($pid) ignored SIGTERM, SIGKILL"; kill -KILL "$pid"; }
    echo "$1 ($pid) stopped"
  fi
  rm -f "$2"   # slurmctld (user slurm) cannot remove its own pidfile in /run
}
if [ "${1:-}" = controller ]; then
  stop_pidfile slurmctld /run/slurmctld.pid
  exit 0
fi
# stopping the daemons does not stop jobs: cancel them first
if [ -f "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  squeue -h -o %i | xargs -r scancel 2>/dev/null
  for i in $(seq 150); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
fi
# slurmd before slurmctld: without a controller slurmd ignores SIGTERM for a long time
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
kill_tree() { local c; for c in $(children "$1"); do kill_tree "$c"; done; kill -KILL "$1" 2>/dev/null; }
for pid in $(pids_named slurmstepd); do   # jobs left by dead daemons
  alive "$pid" && { echo "killing stray slurmstepd $pid and its children"; kill_tree "$pid"; }
done
[ "${1:-}" = all ] && stop_pidfile munged /run/munge/munged.pid
exit 0
