#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests/test_slurm_cluster.py and for trying
# the slurm profile by hand (recipe and pitfalls: /work/shared/slurm-local.md).
#
#   .ci/slurm_local.sh start DIR   install slurm-wlm + munge if missing (needs root + apt), write
#                                  /etc/slurm/slurm.conf (no accounting; an existing one is
#                                  kept as DIR/slurm.conf.orig), start munged (unless one
#                                  answers already), slurmctld and slurmd, wait for an idle node
#   .ci/slurm_local.sh stop DIR    stop every daemon that `start` started, by the PIDs in DIR,
#                                  and put back the original slurm.conf
#
# The config must be at the default path: the plugin's job step drops SLURM_CONF from the
# environment of its inner srun. Without accounting, job status must come from squeue:
#   snakemake --executor slurm --slurm-status-command squeue ...
# Exit codes of start: 0 ready, 3 the daemons cannot start here (the reason is printed).
set -uo pipefail

cmd=${1:-}
D=${2:-}
if [[ -z "$cmd" || -z "$D" ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
mkdir -p "$D"
D=$(cd "$D" && pwd)
CONF=/etc/slurm/slurm.conf
MARK="# written by flowsci .ci/slurm_local.sh for $D"

cannot() { echo "slurm_local: cannot start a local SLURM cluster: $*" >&2; exit 3; }

stop_pidfile() {  # kill the process whose PID is in file $1 (if alive), wait up to 15 s
    local f=$1 pid
    [[ -s "$f" ]] || return 0
    pid=$(cat "$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        echo "slurm_local: stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
}

if [[ "$cmd" == stop ]]; then
    # slurmd first (its job steps end with it), then slurmctld, then munged if we started it
    stop_pidfile "$D/slurmd.pid"
    stop_pidfile "$D/slurmctld.pid"
    stop_pidfile "$D/munged.pid"
    if [[ -f "$D/slurm.conf.orig" ]]; then
        mv -f "$D/slurm.conf.orig" "$CONF" && echo "slurm_local: restored $CONF"
    elif [[ -f "$CONF" ]] && head -1 "$CONF" | grep -qxF "$MARK"; then
        rm -f "$CONF"
    fi
    exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    [[ $(id -u) == 0 ]] || cannot "slurm-wlm/munge are not installed and we are not root"
    command -v apt-get >/dev/null || cannot "slurm-wlm/munge are not installed and there is no apt-get"
    echo "slurm_local: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y -q slurm-wlm munge >"$D/apt.log" 2>&1 \
        || { timeout 300 apt-get update -q >>"$D/apt.log" 2>&1 \
             && timeout 600 apt-get install -y -q slurm-wlm munge >>"$D/apt.log" 2>&1; } \
        || cannot "apt-get install slurm-wlm munge failed: $(tail -3 "$D/apt.log")"
fi
[[ $(id -u) == 0 ]] || cannot "the daemons run as root here (SlurmUser=root) and we are not root"

# 2. munge: reuse a running munged, else start one (it daemonizes and writes its pid file)
if timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1; then
    echo "slurm_local: munged already answers; reusing it"
else
    [[ -s /etc/munge/munge.key ]] || timeout 60 mungekey --create >/dev/null 2>&1 \
        || cannot "no /etc/munge/munge.key and mungekey failed"
    chown munge:munge /etc/munge/munge.key 2>/dev/null
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    rm -f /run/munge/munged.pid
    timeout 30 su -s /bin/sh munge -c /usr/sbin/munged >"$D/munged.out" 2>&1 \
        || cannot "munged failed: $(tail -3 "$D/munged.out")"
    for _ in $(seq 20); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.5; done
    cp /run/munge/munged.pid "$D/munged.pid" 2>/dev/null
    timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1 \
        || cannot "munged started but munge -n | unmunge fails"
fi

# 3. config: one node, this machine's CPUs and 90 % of its memory, no accounting
host=$(hostname -s)
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$D"/spool/ctld "$D"/spool/d "$D"/log
if [[ -f "$CONF" ]] && ! head -1 "$CONF" | grep -qxF "$MARK" && timeout 5 sinfo -h >/dev/null 2>&1; then
    cannot "a SLURM controller of $CONF already answers on this machine (stop it first)"
fi
mkdir -p /etc/slurm
if [[ -f "$CONF" ]] && ! head -1 "$CONF" | grep -qxF "$MARK" && [[ ! -f "$D/slurm.conf.orig" ]]; then
    cp -p "$CONF" "$D/slurm.conf.orig"
fi
cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/slurmctld.daemon.pid
SlurmdPidFile=$D/slurmd.daemon.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# 4. the daemons, in the foreground (-D) as our own children: their PIDs are known exactly
stop_pidfile "$D/slurmd.pid"
stop_pidfile "$D/slurmctld.pid"
nohup slurmctld -D </dev/null >"$D/log/ctld.out" 2>&1 &
echo $! >"$D/slurmctld.pid"
nohup slurmd -D </dev/null >"$D/log/d.out" 2>&1 &
echo $! >"$D/slurmd.pid"

# 5. wait (bounded) for the node to be idle
for _ in $(seq 60); do
    for p in slurmctld slurmd; do
        kill -0 "$(cat "$D/$p.pid")" 2>/dev/null || {
            why=$(tail -3 "$D/log/$p.log" 2>/dev/null)
            "$0" stop "$D" >/dev/null
            cannot "$p exited: $why"
        }
    done
    state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -1)
    [[ "$state" == idle ]] && break
    sleep 1
done
if [[ "$state" != idle ]]; then
    echo "slurm_local: node state '${state:-none}' after 60 s" >&2
    tail -5 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 2>/dev/null
    "$0" stop "$D" >/dev/null
    cannot "the node did not become idle within 60 s"
fi
echo "slurm_local: ready: $(timeout 5 sinfo -h -o '%P %a %D %T %N' | head -1) ($CONF)"
