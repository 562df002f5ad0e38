#!/bin/bash
# Start a fresh one-node Slurm on localhost without systemd (run as root; see docs of issue 5).
# Needs: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# Idempotent: stops what a previous run left and wipes controller state (job ids restart at 1).
# NGPUS (default 1): number of fake GPUs (char devices) offered as GRES gpu.
# NCPUS (default: nproc): CPUs the node offers; more than the machine has lets more one-CPU jobs
# run at once (several GPU jobs on a 2-core machine), with SlurmdParameters=config_overrides.
# "slurm-up.sh controller" only (re)starts slurmctld and keeps the cluster's state.
set -eu
CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
NGPUS=${NGPUS:-1}
NCPUS=${NCPUS:-$(nproc)}
export SLURM_CONF=$CONF_DIR/slurm.conf
ms() { echo $(( $(date +%s%N) / 1000000 )); }
# /proc instead of ps (procps may be missing on a minimal image); kill -0 succeeds on zombies,
# so "alive" means: the process exists and its state is not Z.
proc_stat() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null; }   # fields after comm: state ppid ...
alive() { local s; s=$(proc_stat "$1") || return 1; set -- $s; [ -n "${1:-}" ] && [ "$1" != Z ]; }
wait_controller() {
  for i in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
    if [ -s /run/slurmctld.pid ] && ! alive "$(cat /run/slurmctld.pid)"; then
      echo "slurmctld died" >&2; tail -5 /var/log/slurm/slurmctld.log >&2; return 1
    fi
    sleep 0.1
  done
  scontrol ping | grep -q 'is UP' || { echo "slurmctld not up" >&2; return 1; }
}
t0=$(ms)

# "slurm-up.sh controller": restart only slurmctld, keeping its saved state (jobs keep running);
# the counterpart of "slurm-down.sh controller" (tests of a controller outage)
if [ "${1:-}" = controller ]; then
  if ! { [ -s /run/slurmctld.pid ] && alive "$(cat /run/slurmctld.pid)"; }; then
    rm -f /run/slurmctld.pid
    /usr/sbin/slurmctld -f "$SLURM_CONF"
  fi
  wait_controller
  echo "slurmctld up after $(( $(ms) - t0 )) ms"
  exit 0
fi

"$(dirname "$0")/slurm-down.sh" >/dev/null

# munge: runtime dir (systemd normally makes it), key, daemon (as user munge, else it refuses)
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
if ! { [ -f /run/munge/munged.pid ] && alive "$(cat /run/munge/munged.pid)"; }; then
  runuser -u munge -- /usr/sbin/munged
fi
for i in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done

# fake GPUs: GRES File= must name char devices (same numbers as /dev/null)
install -d -m 0755 /run/fakegpu
for i in $(seq 0 $((NGPUS - 1))); do
  [ -c /run/fakegpu/nvidia$i ] || mknod -m 0666 /run/fakegpu/nvidia$i c 1 3
done

CPUS=$NCPUS
OVERRIDES=
[ "$CPUS" -gt "$(nproc)" ] && OVERRIDES=SlurmdParameters=config_overrides   # else: node drained
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
install -d -m 0755 "$CONF_DIR"
cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
ReturnToService=2
MessageTimeout=5
KillWait=5
MailProg=/bin/true
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$OVERRIDES
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES DefaultTime=01:00:00 MaxTime=1-00:00:00 State=UP
CONF
echo "Name=gpu File=/run/fakegpu/nvidia[0-$((NGPUS - 1))]" > "$CONF_DIR/gres.conf"

# state/log dirs; wipe old state (drain reasons, job ids, cluster name survive restarts otherwise)
install -d -o slurm -g slurm -m 0755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d -o root -g root -m 0755 /var/lib/slurm/slurmd
rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
rm -f /var/log/slurm/jobcomp.log /run/slurmctld.pid /run/slurmd.pid

# the daemons return 0 even when they die right after daemonizing: poll and check the pid
/usr/sbin/slurmctld -f "$SLURM_CONF"
wait_controller
t1=$(ms)

/usr/sbin/slurmd -f "$SLURM_CONF"
st=
for i in $(seq 100); do
  st=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  [ "$st" = idle ] && break
  sleep 0.1
done
[ "$st" = idle ] || { echo "node state: '$st'" >&2; scontrol show node localhost >&2; exit 1; }
echo "slurm up: controller after $((t1 - t0)) ms, node idle after $(( $(ms) - t0 )) ms"
