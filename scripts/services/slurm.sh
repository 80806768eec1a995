#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for Conveyor's integration tests.
#
#   sudo bash scripts/services/slurm.sh          # install if missing, start, wait until idle
#   sudo bash scripts/services/slurm.sh stop     # stop the daemons this script started
#
# Debian 12 (slurm-wlm 22.05 + munge), run as root, no systemd needed: the daemons are
# started by hand. Idempotent: when the cluster already runs with this configuration the
# script only checks it and says so (well under a second). Settings, from the environment:
#
#   CONVEYOR_SLURM_ACCOUNTING=jobcomp   (default) JobCompType=jobcomp/filetxt, no database:
#                                       read with `sacct -c` (worker queue_options:
#                                       {sacct_args: ["-c"]}). ~5 s from nothing.
#   CONVEYOR_SLURM_ACCOUNTING=slurmdbd  slurmdbd + mariadb as well: plain `sacct` works (the
#                                       adapter's default). ~35 s from nothing.
#   CONVEYOR_SLURM_NETNS=NAME           (or NETNS=NAME) a second cluster inside the network
#                                       namespace NAME, beside the first: its daemons run
#                                       under `nsenter --net` with their own configuration
#                                       (/etc/slurm/slurm-NAME.conf), spool, state and pid
#                                       files, and job ids from N*1000000 up (N from 1 to
#                                       60, from the name). Clients in the
#                                       namespace (through its sshd, say) read the shared
#                                       /etc/slurm/slurm.conf: the same host name and ports,
#                                       which there reach the namespace's daemons. Both
#                                       clusters append to one job completion log, so
#                                       `sacct -c` works in both (their job ids never
#                                       collide). jobcomp accounting only.
#
# Every variant sets JobCompType, so `sacct -c` always works. Tuned for tests: finished
# jobs stay listed 10 min, the scheduler runs every 2 s, the node announces at least 8
# CPUs (config_overrides) so that a few one-CPU test jobs run side by side, and KillWait
# is short so that a walltime kill or a cancel ends quickly. slurmctld checks time
# limits every 30 s (hard-coded), so a job with a 1-minute limit ends 60-90 s in.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ACCOUNTING=${CONVEYOR_SLURM_ACCOUNTING:-jobcomp}
NS=${CONVEYOR_SLURM_NETNS:-${NETNS:-}}
T0=$(date +%s%N)
say() { printf 'slurm.sh [%.1fs]: %s\n' "$(($(date +%s%N) - T0))e-9" "$*"; }
# fd 9: the real stderr, for errors raised where output goes to /dev/null (wait_for).
exec 9>&2
die() { printf 'slurm.sh: error: %s\n' "$*" >&9; exit 1; }

case "$ACCOUNTING" in jobcomp | slurmdbd) ;; *)
  die "CONVEYOR_SLURM_ACCOUNTING must be jobcomp or slurmdbd, not '$ACCOUNTING'" ;;
esac
[ "$(id -u)" = 0 ] || die "run me as root (I install packages and start daemons)"
if [ -n "$NS" ]; then
  [ "$ACCOUNTING" = jobcomp ] || die "a cluster in a network namespace keeps jobcomp accounting only"
  [ -e "/run/netns/$NS" ] || die "no network namespace '$NS' (/run/netns/$NS): make it first"
  if [ -z "${_CONVEYOR_IN_NETNS:-}" ]; then
    # Not `ip netns exec`: it remounts /sys, and slurmd then finds no cgroup filesystem.
    exec env _CONVEYOR_IN_NETNS=1 nsenter --net="/run/netns/$NS" bash "$0" "$@"
  fi
  SFX="-$NS"
  # Job ids of their own (under SLURM's MaxJobId of 67043328), from the namespace's name:
  # the clusters share one job completion log.
  FIRST_JOB_ID=$(((1 + $(printf '%s' "$NS" | cksum | cut -d' ' -f1) % 60) * 1000000))
else
  SFX=""
  FIRST_JOB_ID=1
fi
# One set of daemon paths per cluster, so that a namespace's cluster runs beside the main one.
CONF_FILE=/etc/slurm/slurm$SFX.conf
CTLD_PID=/run/slurm/slurmctld$SFX.pid
SLURMD_PID=/run/slurm/slurmd$SFX.pid
WHERE=${NS:+ in namespace $NS}

# PID 1 on some containers/VMs reaps orphans only every second or two: an exited daemon
# lingers as a zombie, so `kill -0` is no liveness test. Read the process state instead.
alive() {
  [ -s "$1" ] || return 1
  local st
  st=$(awk '{print $3}' "/proc/$(cat "$1")/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
stop_pidfile() {
  alive "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$1" || return 0; sleep 0.1; done
  die "$(basename "$1" .pid) (pid $pid) did not stop within 10 s"
}
wait_for() { # seconds, command...: a deadline, as one try may itself take seconds
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}
# started NAME PID_FILE LOG: false while the daemon has written no pid file yet (it forks
# first); a daemon that died after writing it says why, at once.
started() {
  [ -s "$2" ] || return 1
  alive "$2" || die "$1 exited at start; the end of $3: $(tail -n 3 "$3" 2>/dev/null)"
}
# start_daemon PID_FILE COMMAND...: start it unless it runs; a stale pid file goes first.
start_daemon() {
  local pid_file=$1
  shift
  alive "$pid_file" && return 0
  rm -f "$pid_file"
  "$@"
}
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_ready() { sinfo --noheader --format=%T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

case "${1:-start}" in
  start) ;;
  stop)
    stop_pidfile "$SLURMD_PID"
    stop_pidfile "$CTLD_PID"
    [ -n "$NS" ] || stop_pidfile /run/slurm/slurmdbd.pid
    say "stopped the SLURM daemons$WHERE (munged and mariadb left running)"
    exit 0
    ;;
  *) die "usage: $0 [start|stop]" ;;
esac

# --- packages -------------------------------------------------------------------------
# `dpkg -s` succeeds for removed-but-not-purged packages: check the status field.
installed() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
}
packages=(slurm-wlm munge)
[ "$ACCOUNTING" = slurmdbd ] && packages+=(slurmdbd mariadb-server)
if ! installed "${packages[@]}"; then
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    apt-get update -qq || die "apt-get update failed"
  fi
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
    || die "apt-get install ${packages[*]} failed"
  say "installed ${packages[*]}"
fi

# --- configuration --------------------------------------------------------------------
HOST=$(hostname -s)
NCPU=$(nproc)
# At least 8 CPUs announced: test jobs are tiny, and several must run at once.
CPUS=$((NCPU > 8 ? NCPU : 8))
MEM_MB=$(($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 512))
if [ "$ACCOUNTING" = slurmdbd ]; then
  STORAGE="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  STORAGE="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# slurm_conf SUFFIX FIRST_JOB_ID: one cluster's configuration; the suffix names its paths.
slurm_conf() {
  local first=""
  [ "$2" = 1 ] || first=$'\n'"FirstJobId=$2"
  cat <<EOF
# Written by Conveyor's scripts/services/slurm.sh (accounting: $ACCOUNTING)
ClusterName=conveyor
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld$1
SlurmdSpoolDir=/var/spool/slurmd$1
SlurmctldPidFile=/run/slurm/slurmctld$1.pid
SlurmdPidFile=/run/slurm/slurmd$1.pid
SlurmctldLogFile=/var/log/slurm/slurmctld$1.log
SlurmdLogFile=/var/log/slurm/slurmd$1.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=600${first}
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
${STORAGE}
SchedulerParameters=sched_interval=2
MessageTimeout=10
InactiveLimit=0
KillWait=5
OverTimeLimit=0
Waittime=0
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}
CONF=$(slurm_conf "$SFX" "$FIRST_JOB_ID")

mkdir -p /etc/slurm "/var/spool/slurmctld$SFX" "/var/spool/slurmd$SFX" /var/log/slurm \
  /run/slurm /run/munge /var/log/munge /var/lib/munge
# Clients everywhere read /etc/slurm/slurm.conf; a namespace's daemons read their own.
[ -z "$NS" ] || [ -s /etc/slurm/slurm.conf ] || slurm_conf "" 1 >/etc/slurm/slurm.conf
changed=0
if [ "$(cat "$CONF_FILE" 2>/dev/null)" != "$CONF" ]; then
  printf '%s\n' "$CONF" >"$CONF_FILE"
  changed=1
fi

if [ "$changed" = 0 ] && alive "$CTLD_PID" && alive "$SLURMD_PID" && ctld_up && node_ready; then
  say "SLURM already running$WHERE: $(sinfo --noheader --format='partition %P, node %N %T, %c CPUs')"
  exit 0
fi
if [ "$changed" = 1 ]; then
  # A new configuration (or accounting mode) needs fresh daemons.
  stop_pidfile "$SLURMD_PID"
  stop_pidfile "$CTLD_PID"
fi

# --- munge ----------------------------------------------------------------------------
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
# Its socket is a file: one munged serves every network namespace.
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
wait_for 5 sh -c 'munge -n | unmunge' || die "munged does not answer (see /var/log/munge/munged.log)"

# --- slurmdbd + mariadb (optional) ----------------------------------------------------
if [ "$ACCOUNTING" = slurmdbd ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    (setsid mysqld_safe --bind-address=127.0.0.1 </dev/null >/var/log/slurm/mysqld_safe.log 2>&1 &)
    wait_for 30 mysqladmin ping || die "mariadb did not start (see /var/log/mysql/error.log)"
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  DBD_CONF="AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db"
  if [ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" != "$DBD_CONF" ]; then
    (umask 077 && printf '%s\n' "$DBD_CONF" >/etc/slurm/slurmdbd.conf)
    stop_pidfile /run/slurm/slurmdbd.pid
  fi
  alive /run/slurm/slurmdbd.pid || /usr/sbin/slurmdbd
  wait_for 30 sacctmgr --noheader list cluster \
    || die "slurmdbd does not answer (see /var/log/slurm/slurmdbd.log)"
  sacctmgr --immediate add cluster conveyor >/dev/null 2>&1 || true
fi

# --- slurmctld, slurmd ----------------------------------------------------------------
ctld_alive_and_up() { started slurmctld "$CTLD_PID" "/var/log/slurm/slurmctld$SFX.log" && ctld_up; }
slurmd_alive_and_ready() { started slurmd "$SLURMD_PID" "/var/log/slurm/slurmd$SFX.log" && node_ready; }
start_daemon "$CTLD_PID" /usr/sbin/slurmctld -f "$CONF_FILE"
wait_for 20 ctld_alive_and_up || die "slurmctld is not UP after 20 s; the end of" \
  "/var/log/slurm/slurmctld$SFX.log: $(tail -n 3 "/var/log/slurm/slurmctld$SFX.log" 2>/dev/null)"
start_daemon "$SLURMD_PID" /usr/sbin/slurmd -f "$CONF_FILE"
if ! wait_for 30 slurmd_alive_and_ready; then
  # A node left DOWN or DRAINED by an earlier run (a changed CPU count...) comes back here.
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  wait_for 10 node_ready || die "node $HOST is not idle: $(sinfo --noheader \
    --format='%T %E' 2>&1) (see /var/log/slurm/slurmd$SFX.log)"
fi
say "SLURM ready$WHERE ($ACCOUNTING accounting): $(sinfo --noheader --format='partition %P, node %N %T, %c CPUs')"
