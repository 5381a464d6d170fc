#!/usr/bin/env bash
# Build the execbox sandbox image, only when it is missing or its inputs changed.
#
#   sandbox_images/python/build.sh            # build if needed
#   EXECBOX_IMAGE=name:tag build.sh           # another tag
#   EXECBOX_BASE_IMAGE=name:tag ...           # another base (python3.11 + venv + g++)
#   build.sh --context DIR                    # only prepare a build context in DIR (compose)
#   build.sh --inputs-hash                    # print the hash the image is labelled with
#   build.sh --base-image                     # print the offline base image's tag
#
# Base image: an offline Debian bookworm rootfs made with debootstrap from the Debian mirror and
# `docker import`ed (built once and kept): python3.11 and the C++ toolchain (g++ 12, libssl-dev)
# that /run_code's cpp runs. EXECBOX_BASE_IMAGE picks another base, which must carry python3.11
# with venv and g++ (the build checks). Wheels are downloaded on the host with pip and installed
# with --no-index.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The batch worker protocol, one module for the service and the fork server: the image carries it.
protocol=$(cd "$here/../.." && pwd)/service/execbox_server/worker_protocol.py
# The typed test values and their judge, the SDK's module: the fork server imports it as execbox_values.
values=$(cd "$here/../.." && pwd)/clients/python/execbox/_values.py
image=${EXECBOX_IMAGE:-execbox-sandbox-python:latest}
# The tag names what the base carries: a new package list gets a new tag, so a base built by an
# older tree is never reused without it.
offline_base=${EXECBOX_OFFLINE_BASE:-execbox-base-bookworm:py-gxx-1}
cache=${EXECBOX_CACHE_DIR:-/var/cache/execbox}

# The Debian mirror for the offline base: EXECBOX_DEBIAN_MIRROR, else the one this host's apt
# already uses for Debian (deb822 .sources or a one-line sources.list), else deb.debian.org.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk 'BEGIN { RS=""; FS="\n" }
      /(^|\n)Suites:[^\n]*bookworm([ \n]|$)/ && !/debian-security/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); print a[2]; exit }
      }' "$f"
  done | head -n 1
  if [ -r /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $3 ~ /^bookworm$/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list
  fi
}
mirror=${EXECBOX_DEBIAN_MIRROR:-$(host_mirror | head -n 1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}

# Python packages: the hash-pinned lock for this architecture (lock.sh writes it); without
# one, the unpinned requirements.txt, with a warning.
lock="$here/requirements-$(uname -m).lock"

log() { printf '[images] %s\n' "$*" >&2; }

# Inputs that define the image; the image carries their hash as a label.
inputs_hash=$(cd "$here" && cat Dockerfile requirements.txt ./*.lock ./*.py "$protocol" "$values" 2>/dev/null | sha256sum | cut -c1-16)
if [ "${1:-}" = --inputs-hash ]; then echo "$inputs_hash"; exit 0; fi
if [ "${1:-}" = --base-image ]; then echo "$offline_base"; exit 0; fi

choose_base() {
  local want=${EXECBOX_BASE_IMAGE:-offline}
  if [ "$want" != offline ]; then echo "$want"; return; fi
  if ! docker image inspect "$offline_base" >/dev/null 2>&1; then
    build_offline_base
  fi
  echo "$offline_base"
}

build_offline_base() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing debootstrap ..."
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    else
      log "debootstrap is needed for the offline base image (apt-get install debootstrap, as root)."
      exit 1
    fi
  fi
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/execbox-rootfs.XXXXXX")
  log "debootstrap bookworm (minbase + python3, python3-venv, g++, libssl-dev) from $mirror (a minute or two) ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,g++,libssl-dev \
    bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
  # Drop what a sandbox never needs: package caches and docs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" -c . | docker import - "$offline_base" >/dev/null
  rm -rf "$root"
  log "imported $offline_base."
}

download_wheels() {
  # Same CPython (3.11) as both bases; wheels only, for the image's platform.
  local arch plats=()
  arch=$(uname -m)
  for v in $(seq 17 36); do plats+=(--platform "manylinux_2_${v}_${arch}"); done
  plats+=(--platform "manylinux2014_${arch}")
  mkdir -p "$cache/wheels"
  local reqs=("$here/requirements.txt") hashes=()
  if [ -f "$lock" ]; then
    reqs=("$lock")
    hashes=(--require-hashes)
  else
    log "WARNING: no $(basename "$lock"): installing unpinned requirements.txt (run lock.sh to pin them)."
  fi
  log "downloading wheels into $cache/wheels (cached between builds) ..."
  python3 -m pip download -q --disable-pip-version-check --only-binary=:all: "${hashes[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 "${plats[@]}" \
    -d "$cache/wheels" -r "${reqs[0]}" 2> >(grep -v '^WARNING: Location' >&2)
}

prepare_context() {
  local ctx=$1
  mkdir -p "$ctx"
  cp "$here"/Dockerfile "$here"/*.py "$protocol" "$ctx"/
  cp "$values" "$ctx"/execbox_values.py
  # The image installs requirements.lock: the hash-pinned lock when there is one (pip then
  # checks every wheel's hash), else the plain list.
  if [ -f "$lock" ]; then cp "$lock" "$ctx/requirements.lock"; else cp "$here/requirements.txt" "$ctx/requirements.lock"; fi
  rm -rf "$ctx/wheels"
  cp -r "$cache/wheels" "$ctx/wheels"
}

mkdir -p "$cache"
if [ "${1:-}" = --context ]; then
  download_wheels
  prepare_context "$2"
  exit 0
fi

current=$(docker image inspect -f '{{ index .Config.Labels "execbox.inputs" }}' "$image" 2>/dev/null || true)
if [ "$current" = "$inputs_hash" ] && [ -z "${EXECBOX_FORCE_BUILD:-}" ]; then
  log "$image is up to date (inputs $inputs_hash)."
  exit 0
fi
base=$(choose_base)
download_wheels

ctx=$(mktemp -d "${TMPDIR:-/tmp}/execbox-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
prepare_context "$ctx"
log "building $image from $base ..."
if ! DOCKER_BUILDKIT=0 docker build -q --network none \
  --build-arg "BASE_IMAGE=$base" --label "execbox.inputs=$inputs_hash" \
  -t "$image" "$ctx" >"$cache/build.log" 2>&1; then
  tail -n 40 "$cache/build.log" >&2
  exit 1
fi
log "built $image (inputs $inputs_hash)."
