#!/usr/bin/env bash
# A single-node Son of Grid Engine (Debian 12's gridengine-* packages, SGE 8.1.9) for
# Conveyor's integration tests: install if missing, start if not running, wait until a
# job can run, print one line saying so. Idempotent; run as root; needs no systemd.
#
#   bash scripts/services/sge.sh    # from nothing 9-14 s (apt-get install 7-12 s); then <1 s
#
# Afterwards: SGE_ROOT=/var/lib/gridengine SGE_CELL=default (the Debian defaults, so the
# client commands find the cell without them), queue all.q on this host with one slot per
# core, parallel environment "smp" (allocation_rule $pe_slots) attached to all.q.
# Daemons: sge_qmaster (port 6444) and sge_execd (port 6445); SLURM's are 6817-6819, and
# nothing here touches SLURM or munge, so both systems run side by side. Do not install
# Debian's slurm-wlm-torque next to this: it Conflicts with gridengine-client, and apt
# removes SGE to install it.
#
# What a stock install needs here (each found by an error, see comments below):
#  1. debconf preseed: without shared/gridengineconfig and shared/gridenginemaster the
#     master's postinst creates no cell (no $SGE_ROOT/default/common/bootstrap).
#  2. host_aliases: when /etc/hosts maps the host name to 127.0.0.1, whose reverse name is
#     "localhost", qmaster refuses every client ("client IP resolved to host name
#     localhost. This is not identical to clients host name ...").
#  3. min_uid/min_gid 0: SGE refuses jobs of users below uid 1000 by default ("your user id
#     0 is lower than minimum user id 1000"), so root (CI, this project's machines) could
#     not run jobs. The change must precede execd's start: execd caches the global config,
#     and a stale one fails the job and sets the queue in error state E.
#  4. scheduler interval 1 s instead of 15 s, and accounting_flush_time=0 so that qacct
#     knows a job as soon as it leaves qstat (default: up to ~15 s later).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
CELL=$SGE_ROOT/$SGE_CELL/common
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid
START=$(date +%s)

say() { printf 'sge.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run me as root (I install packages and start daemons)"
HOST=$(hostname -s)
[ -n "$HOST" ] || die "hostname -s printed nothing"

installed() {
  # `dpkg -s` says yes for removed-but-not-purged packages; the status field does not lie.
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

# A daemon is alive if its pid file names a process that is not a zombie (exited daemons
# can linger as zombies for a second or two where PID 1 reaps slowly).
alive() {
  local pid state
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...
  local limit=$1 what=$2 end
  shift 2
  end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.2
  done
  [ -n "$what" ] && say "$what"
  return 0
}

# --- 1. packages, with the cell created by the master's postinst --------------------------
if ! installed gridengine-master gridengine-exec gridengine-client; then
  if installed slurm-wlm-torque; then
    die "slurm-wlm-torque is installed and conflicts with gridengine-client; remove it first"
  fi
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq
  for p in gridengine-common gridengine-master gridengine-client gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n' "$p"
    printf '%s shared/gridenginecell string default\n' "$p"
    printf '%s shared/gridenginemaster string %s\n' "$p" "$HOST"
  done | debconf-set-selections
  say "installing gridengine-master, -exec, -client (apt-get)"
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
    gridengine-master gridengine-exec gridengine-client >/dev/null \
    || die "apt-get install gridengine-master gridengine-exec gridengine-client failed"
fi
[ -s "$CELL/bootstrap" ] || die "no SGE cell at $CELL (bootstrap missing): the packages were \
installed without the debconf answers; purge gridengine-* and run me again"

# --- 2. qmaster ------------------------------------------------------------------------------
[ -s "$CELL/host_aliases" ] && grep -qx "$HOST localhost" "$CELL/host_aliases" \
  || echo "$HOST localhost" >"$CELL/host_aliases"
mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine
if ! alive "$QMASTER_PID"; then
  rm -f "$QMASTER_PID"
  /usr/sbin/sge_qmaster || die "sge_qmaster failed to start; see /var/spool/gridengine/qmaster/messages"
fi
wait_until 30 "" qconf -sh || die "qmaster does not answer qconf -sh after 30 s; \
see /var/spool/gridengine/qmaster/messages"

# --- 3. configuration (each change only if needed, so a rerun changes nothing) --------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CHANGED_GLOBAL=0
# qconf wraps long values onto continuation lines ending in '\': join them before editing.
qconf -sconf global | sed -e ':a' -e '/\\$/N; s/[[:space:]]*\\\n[[:space:]]*/ /; ta' >"$WORK/global"
if ! grep -Eq '^min_uid +0$' "$WORK/global" || ! grep -Eq '^min_gid +0$' "$WORK/global" \
  || ! grep -Eq '^reporting_params .*accounting_flush_time=00:00:00' "$WORK/global" \
  || grep -q '^[^ ]*=' "$WORK/global"; then
  # The reporting line is written whole: the stock one plus accounting_flush_time; a line
  # whose name holds '=' can only be the debris of an earlier, broken edit.
  sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
    -e 's/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:15 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/' \
    -e '/^[^ ]*=/d' "$WORK/global"
  # qconf -Mconf takes the configuration's name from the file's name.
  (cd "$WORK" && qconf -Mconf global >/dev/null) || die "qconf -Mconf global failed"
  CHANGED_GLOBAL=1
fi
qconf -ssconf >"$WORK/sconf"
if ! grep -Eq '^schedule_interval +0:0:1$' "$WORK/sconf"; then
  sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
    -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' "$WORK/sconf"
  qconf -Msconf "$WORK/sconf" >/dev/null || die "qconf -Msconf failed"
fi
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null 2>&1 || true
if ! qconf -se "$HOST" >/dev/null 2>&1; then
  printf '%s\n' "hostname $HOST" "load_scaling NONE" "complex_values NONE" \
    "user_lists NONE" "xuser_lists NONE" "projects NONE" "xprojects NONE" \
    "usage_scaling NONE" "report_variables NONE" >"$WORK/exechost"
  qconf -Ae "$WORK/exechost" >/dev/null || die "qconf -Ae (execution host $HOST) failed"
fi
if ! qconf -sp smp >/dev/null 2>&1; then
  printf '%s\n' "pe_name smp" "slots 9999" "user_lists NONE" "xuser_lists NONE" \
    'start_proc_args /bin/true' 'stop_proc_args /bin/true' 'allocation_rule $pe_slots' \
    "control_slaves FALSE" "job_is_first_task TRUE" "urgency_slots min" \
    "accounting_summary FALSE" "qsort_args NONE" >"$WORK/pe"
  qconf -Ap "$WORK/pe" >/dev/null || die "qconf -Ap (parallel environment smp) failed"
fi
if ! qconf -sq all.q >/dev/null 2>&1; then
  {
    printf '%s\n' "qname all.q" "hostlist $HOST" "seq_no 0" "load_thresholds NONE" \
      "suspend_thresholds NONE" "nsuspend 1" "suspend_interval 00:05:00" "priority 0" \
      "min_cpu_interval 00:05:00" "processors UNDEFINED" "qtype BATCH INTERACTIVE" \
      "ckpt_list NONE" "pe_list smp" "rerun FALSE" "slots $(nproc)" "tmpdir /tmp" \
      "shell /bin/bash" "prolog NONE" "epilog NONE" "shell_start_mode unix_behavior" \
      "starter_method NONE" "suspend_method NONE" "resume_method NONE" \
      "terminate_method NONE" "notify 00:00:60" "owner_list NONE" "user_lists NONE" \
      "xuser_lists NONE" "subordinate_list NONE" "complex_values NONE" "projects NONE" \
      "xprojects NONE" "calendar NONE" "initial_state default"
    for limit in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack \
      s_core h_core s_rss h_rss s_vmem h_vmem; do
      printf '%s INFINITY\n' "$limit"
    done
  } >"$WORK/queue"
  qconf -Aq "$WORK/queue" >/dev/null || die "qconf -Aq (queue all.q) failed"
elif ! qconf -sq all.q | grep -Eq '^pe_list +.*\bsmp\b'; then
  qconf -aattr queue pe_list smp all.q >/dev/null || die "cannot add pe smp to all.q"
fi

# --- 4. execd (after the global config: it caches min_uid) ----------------------------------
execd_pidfile() { ls /var/spool/gridengine/execd/*/execd.pid 2>/dev/null | head -n1; }
PIDFILE=$(execd_pidfile || true)
if [ -n "$PIDFILE" ] && alive "$PIDFILE" && [ "$CHANGED_GLOBAL" = 1 ]; then
  say "restarting sge_execd: it started before min_uid was set"
  qconf -ke "$HOST" >/dev/null 2>&1 || kill "$(cat "$PIDFILE")"
  wait_until 20 "" bash -c "! [ -d /proc/$(cat "$PIDFILE") ] || \
    [ \"\$(awk '{print \$3}' /proc/$(cat "$PIDFILE")/stat)\" = Z ]" \
    || die "sge_execd (pid $(cat "$PIDFILE")) did not stop"
fi
if [ -z "$PIDFILE" ] || ! alive "$PIDFILE"; then
  /usr/sbin/sge_execd || die "sge_execd failed to start; see /var/spool/gridengine/execd/*/messages"
fi
# The queue instance has a load average (last column) once execd reports to qmaster.
queue_up() { qstat -f -q "all.q@$HOST" 2>/dev/null | grep -Eq "^all\.q@$HOST +[A-Z]+ +[0-9/]+ +[0-9.]+ "; }
wait_until 60 "" queue_up || die "execd on $HOST did not report to qmaster within 60 s \
(qstat -f: $(qstat -f 2>&1 | tr '\n' ' '))"
# A queue left in error state (E) by an earlier run with a stale config takes no jobs.
if qstat -f -q "all.q@$HOST" | grep -Eq "^all\.q@$HOST .* [a-zA-Z]*E[a-zA-Z]*$"; then
  qmod -c "all.q@$HOST" >/dev/null 2>&1 || true
fi
echo "SGE ready: queue all.q@$HOST ($(nproc) slots, pe smp), root jobs allowed, \
qmaster pid $(cat "$QMASTER_PID"), $(( $(date +%s) - START )) s"
