#!/usr/bin/env bash
# A private OpenSSH server for Conveyor's SSH tests: a test user, generated keys, and a
# Python environment with this checkout's conveyor installed for that user.
#
#   sudo bash scripts/services/sshd.sh          # install if missing, start, print one line
#   sudo bash scripts/services/sshd.sh stop     # stop this sshd (by its pid file)
#
# Debian 12, run as root, no systemd needed. Idempotent: an sshd already serving this
# configuration is left alone (well under a second). It never touches /etc/ssh/sshd_config
# nor a system sshd. Settings, from the environment:
#
#   CONVEYOR_SSHD_ADDR=127.0.0.1    listen address
#   CONVEYOR_SSHD_PORT=22022        listen port
#   CONVEYOR_SSHD_NETNS=NAME        run sshd inside that network namespace (netns-host.sh)
#   CONVEYOR_SSHD_NAME=sshd         names its directory and description file (below)
#   CONVEYOR_TEST_USER=cvtest       the login user (made if missing; key login only)
#   CONVEYOR_TEST_ROOT=/var/lib/conveyor-test   where everything below lives
#
# What it leaves, under $CONVEYOR_TEST_ROOT:
#   keys/client_key          unencrypted ed25519 key of the test user (and .pub)
#   keys/client_key_enc      the same user's second key, encrypted with the passphrase in
#                            keys/passphrase (tests pass it through an environment variable)
#   venv/                    /usr/bin/python3 venv with this checkout installed (editable if
#                            the test user can read the checkout, else a copy), readable by
#                            the test user: the worker side's Python. Root's own Python
#                            (pyenv under /root, mode 700) is out of the user's reach.
#   $NAME/sshd_config, host key, sshd.pid, sshd.log, known_hosts (the host's key line)
#   $NAME.env                KEY=VALUE lines the tests read: ADDR PORT USER KEY KEY_ENC
#                            PASSPHRASE_FILE KNOWN_HOSTS PYTHON PID_FILE NETNS HOME
#
# Why a test user and not root: root's ~/.bashrc here runs `pyenv init`, which costs
# ~200 ms on every command sshd runs; a user with Debian's default skeleton costs ~45 ms.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ADDR=${CONVEYOR_SSHD_ADDR:-127.0.0.1}
PORT=${CONVEYOR_SSHD_PORT:-22022}
NS=${CONVEYOR_SSHD_NETNS:-}
NAME=${CONVEYOR_SSHD_NAME:-sshd}
TUSER=${CONVEYOR_TEST_USER:-cvtest}
ROOT=${CONVEYOR_TEST_ROOT:-/var/lib/conveyor-test}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$ROOT/$NAME
KEYS=$ROOT/keys
VENV=$ROOT/venv
T0=$(date +%s%N)
say() { printf 'sshd.sh [%.1fs]: %s\n' "$(($(date +%s%N) - T0))e-9" "$*"; }
die() { printf 'sshd.sh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run me as root (I install packages, add a user and start sshd)"

# PID 1 on some VMs reaps orphans only every second or two: an exited daemon lingers as a
# zombie, so `kill -0` is no liveness test. Read the process state instead.
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
  for _ in $(seq 50); do alive "$1" || return 0; sleep 0.1; done
  die "sshd (pid $pid) did not stop within 5 s"
}
in_ns() { if [ -n "$NS" ]; then nsenter --net="/run/netns/$NS" "$@"; else "$@"; fi; }

case "${1:-start}" in
  start) ;;
  stop)
    stop_pidfile "$DIR/sshd.pid"
    say "stopped sshd $NAME"
    exit 0
    ;;
  *) die "usage: $0 [start|stop]" ;;
esac
[ -z "$NS" ] || [ -e "/run/netns/$NS" ] || die "no network namespace '$NS': make it first"

# --- packages -------------------------------------------------------------------------
installed() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
}
if ! installed openssh-server python3-venv; then
  compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null || apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends openssh-server python3-venv >/dev/null \
    || die "apt-get install openssh-server python3-venv failed"
  say "installed openssh-server python3-venv"
fi

# --- user and keys --------------------------------------------------------------------
if ! id "$TUSER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$TUSER"
  # '*' (no password) rather than '!' (locked): sshd refuses every login of a locked
  # account when UsePAM is off, keys included.
  usermod -p '*' "$TUSER"
  say "added user $TUSER"
fi
HOME_DIR=$(getent passwd "$TUSER" | cut -d: -f6)
mkdir -p "$KEYS" "$DIR" /run/sshd
chmod 755 "$ROOT" "$DIR" /run/sshd
chmod 700 "$KEYS"
[ -s "$KEYS/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C conveyor-test -f "$KEYS/client_key"
[ -s "$KEYS/passphrase" ] || (umask 077 && printf 'conveyor test passphrase %s\n' "$RANDOM$RANDOM" >"$KEYS/passphrase")
[ -s "$KEYS/client_key_enc" ] || ssh-keygen -q -t ed25519 -N "$(cat "$KEYS/passphrase")" \
  -C conveyor-test-encrypted -f "$KEYS/client_key_enc"
cat "$KEYS/client_key.pub" "$KEYS/client_key_enc.pub" >"$ROOT/authorized_keys"
chmod 644 "$ROOT/authorized_keys"
[ -s "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/ssh_host_ed25519_key"

# --- the worker side's Python ---------------------------------------------------------
# Editable when the test user can read this checkout, so the remote side always runs
# the code under test; otherwise (a checkout under /root, say) a copy, reinstalled when
# the sources change. Rebuilt only when needed.
if runuser -u "$TUSER" -- test -r "$REPO/src/conveyor/__init__.py"; then
  MODE=editable
  WANT="$REPO/src/conveyor/__init__.py"
else
  MODE=copy
  WANT=$(cd "$REPO" && find src pyproject.toml -type f \( -name '*.py' -o -name '*.toml' -o -name '*.j2' \) -print0 \
    | sort -z | xargs -0 sha1sum | sha1sum | cut -d' ' -f1)
fi
venv_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  local where
  where=$(runuser -u "$TUSER" -- "$VENV/bin/python" -c 'import jobflow, conveyor; print(conveyor.__file__)' 2>/dev/null) || return 1
  if [ "$MODE" = editable ]; then [ "$where" = "$WANT" ]; else [ "$(cat "$VENV/.conveyor-sources" 2>/dev/null)" = "$WANT" ]; fi
}
if ! venv_ok; then
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  if [ "$MODE" = editable ]; then
    args=(-e "$REPO")
  else
    args=(--force-reinstall --no-deps "$REPO")
    "$VENV/bin/pip" install --disable-pip-version-check "$REPO" >"$ROOT/pip.log" 2>&1 \
      || die "pip install $REPO into $VENV failed (see $ROOT/pip.log)"
  fi
  "$VENV/bin/pip" install --disable-pip-version-check "${args[@]}" >>"$ROOT/pip.log" 2>&1 \
    || die "pip install ${args[*]} into $VENV failed (see $ROOT/pip.log)"
  [ "$MODE" = editable ] || echo "$WANT" >"$VENV/.conveyor-sources"
  chmod -R a+rX "$VENV"
  venv_ok || die "$TUSER cannot import conveyor and jobflow from $VENV (see $ROOT/pip.log)"
  say "installed conveyor ($MODE, $REPO) into $VENV"
fi

# --- sshd -----------------------------------------------------------------------------
CONF=$(
  cat <<EOF
# Written by Conveyor's scripts/services/sshd.sh
Port $PORT
ListenAddress $ADDR
HostKey $DIR/ssh_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $ROOT/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $TUSER
UsePAM no
# The authorized_keys file is root's, outside the user's home.
StrictModes no
X11Forwarding no
AllowTcpForwarding yes
PrintMotd no
MaxStartups 100:30:200
MaxSessions 64
ClientAliveInterval 0
Subsystem sftp internal-sftp
LogLevel INFO
EOF
)
changed=0
if [ "$(cat "$DIR/sshd_config" 2>/dev/null)" != "$CONF" ]; then
  printf '%s\n' "$CONF" >"$DIR/sshd_config"
  changed=1
fi
/usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd rejects $DIR/sshd_config"
if [ "$changed" = 1 ]; then stop_pidfile "$DIR/sshd.pid"; fi
if ! alive "$DIR/sshd.pid"; then
  rm -f "$DIR/sshd.pid"
  in_ns /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log" || die "sshd did not start (see $DIR/sshd.log)"
  for _ in $(seq 50); do [ -s "$DIR/sshd.pid" ] && break; sleep 0.1; done
  alive "$DIR/sshd.pid" || die "sshd did not start (see $DIR/sshd.log)"
  started="started"
else
  started="already running"
fi
if [ "$PORT" = 22 ]; then hn=$ADDR; else hn="[$ADDR]:$PORT"; fi
echo "$hn $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" >"$DIR/known_hosts"

cat >"$ROOT/$NAME.env" <<EOF
ADDR=$ADDR
PORT=$PORT
USER=$TUSER
HOME=$HOME_DIR
KEY=$KEYS/client_key
KEY_ENC=$KEYS/client_key_enc
PASSPHRASE_FILE=$KEYS/passphrase
KNOWN_HOSTS=$DIR/known_hosts
PYTHON=$VENV/bin/python
PID_FILE=$DIR/sshd.pid
NETNS=$NS
EOF
say "sshd $NAME $started (pid $(cat "$DIR/sshd.pid")) on $ADDR:$PORT${NS:+ in namespace $NS}, user $TUSER, key $KEYS/client_key, description $ROOT/$NAME.env"
