#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does and we are root on Debian/Ubuntu,
# install Debian's docker.io and start dockerd in the background, without a bridge
# network (sandboxes use --network none; no container networking is ever needed).
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  log "Docker engine is running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown))."
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "No Docker engine answers and this script is not root."
  log "Start Docker yourself (e.g. 'sudo systemctl start docker') or re-run as root."
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-init >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "No Docker engine and no apt-get: install Docker Engine for your OS, start it, and re-run."
    exit 1
  fi
  log "Installing Debian's docker.io (dockerd, docker-init) with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
  log "docker.io installed."
fi

# Debian's package may put its client in /usr/bin while an older client sits first on PATH;
# both speak to the same socket, so either is fine.
log_file=${EXECBOX_DOCKERD_LOG:-/var/log/execbox-dockerd.log}
# execbox's runtime (runc, plus restoring kernels from a checkpoint; scripts/execbox-runtime).
# The service uses it only when CRIU works here (scripts/ensure-criu.sh) and boots kernels
# otherwise; an engine started without it just means booting.
runtime="$(cd "$(dirname "$0")" && pwd)/execbox-runtime"
log "Starting dockerd in the background (--bridge=none --iptables=false, runtime execbox), log: $log_file"
nohup dockerd --bridge=none --iptables=false --ip6tables=false --add-runtime "execbox=$runtime" >"$log_file" 2>&1 &

deadline=$((SECONDS + 60))
until engine_up; do
  if [ $SECONDS -ge $deadline ]; then
    log "dockerd did not answer within 60 s; last lines of $log_file:"
    tail -n 20 "$log_file" >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "Docker engine is up."
