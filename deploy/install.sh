#!/usr/bin/env bash
# Installs Moorage on a Debian 12 / Ubuntu 22.04+ host, as root, from a checkout of the repo.
#
#   install.sh --role controlplane [--advertise IP] [--prometheus] [--token-out FILE]
#   install.sh --role agent --join HOST:PORT [--token TOKEN | --token-file FILE [--wait S]]
#              [--advertise IP]
#
# What it does (each step is idempotent: running it again changes nothing that is in place):
#   - apt: the packages the role needs (etcd for the control plane; iproute2, nftables and
#     busybox-static for agents; python3-venv for both)
#   - a virtualenv in /opt/moorage/venv with this checkout installed (moor, moor-controlplane,
#     moor-agent); links in /usr/local/bin
#   - the `moorage` system user (runs the control plane); /etc/moorage, /var/lib/moorage
#   - /etc/moorage/{controlplane,agent}.env from deploy/config (kept if already there, only the
#     values given as flags are changed), the systemd units from deploy/systemd, enabled, started
#   - --prometheus: Debian's prometheus with deploy/prometheus.yml and a timer that refreshes
#     its targets from the node list every minute
#   - --token-out FILE (control plane): create a join token and write it to FILE
set -euo pipefail

ROLE=""
ADVERTISE=""
JOIN=""
TOKEN=""
TOKEN_FILE=""
TOKEN_OUT=""
WAIT=600
PROMETHEUS=0
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/moorage
ETC=/etc/moorage

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE="$2"; shift 2 ;;
    --advertise) ADVERTISE="$2"; shift 2 ;;
    --join) JOIN="$2"; shift 2 ;;
    --token) TOKEN="$2"; shift 2 ;;
    --token-file) TOKEN_FILE="$2"; shift 2 ;;
    --token-out) TOKEN_OUT="$2"; shift 2 ;;
    --wait) WAIT="$2"; shift 2 ;;
    --prometheus) PROMETHEUS=1; shift ;;
    --source) SOURCE="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 1 ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root"
case "$ROLE" in
  controlplane|agent) ;;
  *) die "--role controlplane or --role agent is required" ;;
esac
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a Moorage checkout (no pyproject.toml)"
if [ "$ROLE" = agent ] && [ -z "$JOIN" ] && [ ! -f "$ETC/agent.env" ]; then
  die "--join HOST:PORT is required for an agent"
fi

# ---- packages ----
packages="python3-venv python3-pip ca-certificates"
if [ "$ROLE" = controlplane ]; then
  packages="$packages etcd-server etcd-client"
  [ "$PROMETHEUS" = 1 ] && packages="$packages prometheus"
else
  packages="$packages iproute2 nftables busybox-static"
fi
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> apt-get install$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# ---- the venv ----
echo "==> $PREFIX/venv"
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
"$PREFIX/venv/bin/pip" install -q "$SOURCE"
for cmd in moor moor-controlplane moor-agent; do
  ln -sf "$PREFIX/venv/bin/$cmd" "/usr/local/bin/$cmd"
done

# ---- users and directories ----
if [ "$ROLE" = controlplane ] && ! id moorage >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/moorage --no-create-home --shell /usr/sbin/nologin moorage
fi
install -d -m 0755 "$ETC" /var/lib/moorage

# set_var FILE NAME VALUE: replace NAME=... in FILE.
set_var() {
  local file="$1" name="$2" value="$3"
  if grep -q "^$name=" "$file"; then
    sed -i "s|^$name=.*|$name=$value|" "$file"
  else
    echo "$name=$value" >> "$file"
  fi
}

install_unit() {
  install -m 0644 "$SOURCE/deploy/systemd/$1" "/etc/systemd/system/$1"
}

# wait_file FILE SECONDS: until FILE exists and is not empty.
wait_file() {
  local i=0
  while [ ! -s "$1" ]; do
    [ "$i" -ge "$2" ] && die "waited ${2}s for $1"
    [ $((i % 30)) = 0 ] && echo "    waiting for $1"
    sleep 1; i=$((i + 1))
  done
}

if [ "$ROLE" = controlplane ]; then
  echo "==> control plane"
  [ -f "$ETC/controlplane.env" ] || install -m 0640 "$SOURCE/deploy/config/controlplane.env" "$ETC/"
  if [ -n "$ADVERTISE" ]; then
    set_var "$ETC/controlplane.env" MOORAGE_LISTEN "$ADVERTISE:7440"
    set_var "$ETC/controlplane.env" MOOR_SERVER "$ADVERTISE:7440"
  fi
  # Debian's etcd.service would hold port 2379; moorage-etcd.service takes over.
  if systemctl list-unit-files etcd.service >/dev/null 2>&1; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
  install_unit moorage-etcd.service
  install_unit moorage-controlplane.service
  systemctl daemon-reload
  systemctl enable --now moorage-etcd.service moorage-controlplane.service
  set -a; . "$ETC/controlplane.env"; set +a
  wait_file "$MOOR_CREDENTIALS" 60
  for i in $(seq 60); do
    moor version >/dev/null 2>&1 && break
    [ "$i" = 60 ] && die "the control plane did not answer on $MOOR_SERVER; see journalctl -u moorage-controlplane"
    sleep 1
  done
  if [ "$PROMETHEUS" = 1 ]; then
    echo "==> prometheus"
    install -m 0644 "$SOURCE/deploy/prometheus.yml" /etc/prometheus/prometheus.yml
    install_unit moorage-prometheus-targets.service
    install_unit moorage-prometheus-targets.timer
    systemctl daemon-reload
    systemctl start moorage-prometheus-targets.service
    systemctl enable --now moorage-prometheus-targets.timer
    systemctl restart prometheus.service
  fi
  if [ -n "$TOKEN_OUT" ]; then
    install -d -m 0755 "$(dirname "$TOKEN_OUT")"
    moor token create --ttl 24h > "$TOKEN_OUT.tmp"
    mv "$TOKEN_OUT.tmp" "$TOKEN_OUT"
    echo "    join token written to $TOKEN_OUT"
  fi
  echo "==> done: moor get nodes   (as root; MOOR_SERVER=$MOOR_SERVER)"
else
  echo "==> agent"
  [ -f "$ETC/agent.env" ] || install -m 0600 "$SOURCE/deploy/config/agent.env" "$ETC/"
  [ -n "$JOIN" ] && set_var "$ETC/agent.env" MOORAGE_JOIN "$JOIN"
  if [ -n "$TOKEN_FILE" ] && [ -z "$TOKEN" ] && [ ! -d /var/lib/moorage/agent/pki ]; then
    wait_file "$TOKEN_FILE" "$WAIT"
    TOKEN="$(tr -d '[:space:]' < "$TOKEN_FILE")"
  fi
  args=""
  if [ -n "$TOKEN" ]; then
    # Kept in a file only root reads, never on the agent's command line (visible in `ps`).
    ( umask 077; printf '%s\n' "$TOKEN" > "$ETC/join-token" )
    args="--token-file $ETC/join-token"
  fi
  [ -n "$ADVERTISE" ] && args="$args --advertise-address $ADVERTISE"
  if [ -n "$ADVERTISE" ]; then
    set_var "$ETC/agent.env" MOORAGE_METRICS_LISTEN "$ADVERTISE:10255"
  fi
  [ -n "$args" ] && set_var "$ETC/agent.env" MOORAGE_AGENT_ARGS "\"${args# }\""
  install_unit moorage-agent.service
  systemctl daemon-reload
  systemctl enable --now moorage-agent.service
  echo "==> done: the node joins $(grep '^MOORAGE_JOIN=' "$ETC/agent.env" | cut -d= -f2)"
fi
