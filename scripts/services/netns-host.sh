#!/usr/bin/env bash
# A second "host" for Conveyor's SSH tests: a network namespace with an address of its own,
# its own sshd (scripts/services/sshd.sh) and, by default, its own SLURM cluster
# (scripts/services/slurm.sh with NETNS=...). The runner, in the root namespace, reaches
# it only over SSH, like a cluster's login node.
#
#   sudo bash scripts/services/netns-host.sh                    # up cvhost1 1, with SLURM
#   sudo bash scripts/services/netns-host.sh up NAME IDX [--no-slurm]
#   sudo bash scripts/services/netns-host.sh down NAME IDX      # stop its daemons, remove it
#
# Addresses come from TEST-NET-2 (198.51.100.0/24, RFC 5737: documentation only, never
# routed), one /30 per host: the root side .4*IDX+1, the namespace side .4*IDX+2 (IDX 1:
# 198.51.100.5 and .6). A low-priority 'unreachable' route for the whole /24 makes packets
# to a removed test host fail here instead of leaving through the default route.
# Idempotent; run as root; needs iproute2 (installed if missing) and nsenter (util-linux).
# The filesystem, users and munge socket are shared with the root namespace; the test
# user, keys and worker Python are sshd.sh's. `ip netns del` does not kill processes in a
# namespace, so `down` stops them first (by pid file, then whatever is left in it).
#
# What it leaves: /var/lib/conveyor-test/NAME.env (sshd.sh's description of its sshd,
# plus VETH and SLURM=0|1), read by the tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
HERE=$(cd "$(dirname "$0")" && pwd)
CMD=${1:-up}
NS=${2:-cvhost1}
IDX=${3:-1}
WITH_SLURM=1
[ "${4:-}" = --no-slurm ] && WITH_SLURM=0
ROOT=${CONVEYOR_TEST_ROOT:-/var/lib/conveyor-test}
H=198.51.100.$((4 * IDX + 1))
N=198.51.100.$((4 * IDX + 2))
VH=${NS:0:12}-h
VN=${NS:0:12}-n
T0=$(date +%s%N)
say() { printf 'netns-host.sh [%.1fs]: %s\n' "$(($(date +%s%N) - T0))e-9" "$*"; }
die() { printf 'netns-host.sh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run me as root (I make network namespaces and start daemons)"
case "$IDX" in '' | *[!0-9]*) die "IDX must be a number 0-62, not '$IDX'" ;; esac
[ "$IDX" -le 62 ] || die "IDX must be a number 0-62, not '$IDX'"

if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then
  compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null || apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends iproute2 util-linux >/dev/null || die "apt-get install iproute2 failed"
fi

case "$CMD" in
  up) ;;
  down)
    if [ -e "/run/netns/$NS" ]; then
      CONVEYOR_SSHD_NAME=$NS CONVEYOR_SSHD_NETNS=$NS bash "$HERE/sshd.sh" stop >/dev/null || true
      if [ -e "/etc/slurm/slurm-$NS.conf" ]; then
        NETNS=$NS bash "$HERE/slurm.sh" stop >/dev/null || true
      fi
      for pid in $(ip netns pids "$NS" 2>/dev/null); do
        say "stopping pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) left in $NS"
        kill "$pid" 2>/dev/null || true
      done
      for _ in $(seq 30); do [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.1; done
      for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    fi
    ip link del "$VH" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -f "$ROOT/$NS.env"
    say "namespace $NS removed"
    exit 0
    ;;
  *) die "usage: $0 [up|down] [NAME] [IDX] [--no-slurm]" ;;
esac

# --- the namespace and its link -------------------------------------------------------
# (not `ip route | grep -q`: with pipefail, grep's early exit fails the pipeline)
routes=$(ip route show table main)
grep -q '^unreachable 198.51.100.0/24' <<<"$routes" || ip route add unreachable 198.51.100.0/24 metric 4000
[ -e "/run/netns/$NS" ] || ip netns add "$NS"
if ! ip link show "$VH" >/dev/null 2>&1; then
  ip link add "$VH" type veth peer name "$VN"
  ip link set "$VN" netns "$NS"
fi
# (Re)apply addresses and states: a fault test may have taken them away.
ip addr replace "$H/30" dev "$VH"
ip link set "$VH" up
ip netns exec "$NS" ip addr replace "$N/30" dev "$VN"
ip netns exec "$NS" ip link set "$VN" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip route del blackhole "$H/32" 2>/dev/null || true

# --- its sshd and SLURM ---------------------------------------------------------------
CONVEYOR_SSHD_NAME=$NS CONVEYOR_SSHD_NETNS=$NS CONVEYOR_SSHD_ADDR=$N CONVEYOR_SSHD_PORT=22 \
  bash "$HERE/sshd.sh" >/dev/null || die "sshd in $NS did not start"
slurm_note="no SLURM"
if [ "$WITH_SLURM" = 1 ]; then
  NETNS=$NS bash "$HERE/slurm.sh" >"$ROOT/$NS-slurm.log" 2>&1 \
    || die "SLURM in $NS did not start: $(tail -3 "$ROOT/$NS-slurm.log")"
  slurm_note="SLURM: $(tail -1 "$ROOT/$NS-slurm.log" | sed 's/^slurm.sh \[[^]]*\]: //')"
fi
printf 'VETH=%s\nSLURM=%s\n' "$VH" "$WITH_SLURM" >>"$ROOT/$NS.env"
say "host $NS up at $N (root side $H, $VH): sshd on $N:22, $slurm_note; description $ROOT/$NS.env"
