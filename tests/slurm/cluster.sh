#!/usr/bin/env bash
# Single-node SLURM "cluster" on localhost for the SLURM tests (Debian 12, root, no systemd).
# Copied from the project lead's shared/slurm-local/cluster.sh (see its README for the lessons behind it),
# with one change: memory limits are enforced without cgroups (jobacct_gather/linux polls each job's
# processes every second and OverMemoryKill kills a job above its --mem), as a real cluster does.
# usage: ci-slurm.sh install | start | stop | status
set -euo pipefail
D=${SLURM_CI_DIR:-/tmp/slurm-local}   # state, logs, pids live here
CONF=/etc/slurm                              # MUST be the default path, see notes

do_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
  local H NODE MEM
  H=$(hostname -s)
  # slurmd -C prints "NodeName=<h> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=N"
  NODE=$(slurmd -C | head -n1)
  MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
  NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/" <<<"$NODE")
  mkdir -p "$D"/{state,spool,log,run} "$CONF"
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
MinJobAge=300
GresTypes=gpu
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
$NODE NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # one fake GPU so --gpus=1 / --gres=gpu:1 jobs schedule; slurmd drops a
  # file-less gpu GRES, and a regular file logs an error, so point it at /dev/null
  echo "NodeName=$H Name=gpu File=/dev/null" >"$CONF/gres.conf"
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
}

start() {
  configure
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
  slurmctld                                     # daemonizes
  slurmd                                        # daemonizes
  for _ in $(seq 60); do
    [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && { sinfo; return 0; }
    sleep 0.5
  done
  echo "slurm did not come up" >&2; tail -n 30 "$D"/log/*.log >&2; return 1
}

stop() {
  local f
  for f in "$D/run/slurmd.pid" "$D/run/slurmctld.pid" /run/munge/munged.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
}

status() { sinfo; squeue --states=all; }

case "${1:-}" in
  install) do_install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
