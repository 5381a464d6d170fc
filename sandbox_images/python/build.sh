#!/usr/bin/env bash
# Build the execbox sandbox image, only when it is missing or its inputs changed.
#
#   sandbox_images/python/build.sh            # build if needed
#   EXECBOX_IMAGE=name:tag build.sh           # another tag
#   EXECBOX_BASE_IMAGE=python:3.11-slim ...   # force a base; "offline" forces debootstrap
#
# Base image: python:3.11-slim when a registry answers, otherwise an offline Debian bookworm
# rootfs made with debootstrap from the Debian mirror and `docker import`ed (built once and
# kept). Wheels are downloaded on the host with pip and installed with --no-index.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${EXECBOX_IMAGE:-execbox-sandbox-python:latest}
registry_base=${EXECBOX_REGISTRY_BASE:-python:3.11-slim}
offline_base=${EXECBOX_OFFLINE_BASE:-execbox-base-bookworm:latest}
cache=${EXECBOX_CACHE_DIR:-/var/cache/execbox}
mirror=${EXECBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[images] %s\n' "$*" >&2; }

# Inputs that define the image; the image carries their hash as a label.
inputs_hash=$(cd "$here" && cat Dockerfile requirements.txt ./*.py | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "execbox.inputs" }}' "$image" 2>/dev/null || true)
if [ "$current" = "$inputs_hash" ] && [ -z "${EXECBOX_FORCE_BUILD:-}" ]; then
  log "$image is up to date (inputs $inputs_hash)."
  exit 0
fi

choose_base() {
  local want=${EXECBOX_BASE_IMAGE:-auto}
  if [ "$want" != auto ] && [ "$want" != offline ]; then echo "$want"; return; fi
  if [ "$want" = auto ]; then
    if docker image inspect "$registry_base" >/dev/null 2>&1; then echo "$registry_base"; return; fi
    if timeout 30 docker pull -q "$registry_base" >/dev/null 2>&1; then echo "$registry_base"; return; fi
    log "no registry answered for $registry_base: using the offline Debian base."
  fi
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
  log "debootstrap bookworm (minbase + python3, python3-venv) from $mirror (about a minute) ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
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
  log "downloading wheels into $cache/wheels (cached between builds) ..."
  python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${plats[@]}" \
    -d "$cache/wheels" -r "$here/requirements.txt" 2> >(grep -v '^WARNING: Location' >&2)
}

mkdir -p "$cache"
base=$(choose_base)
download_wheels

ctx=$(mktemp -d "${TMPDIR:-/tmp}/execbox-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$here"/Dockerfile "$here"/requirements.txt "$here"/*.py "$ctx"/
cp -r "$cache/wheels" "$ctx/wheels"
log "building $image from $base ..."
if ! DOCKER_BUILDKIT=0 docker build -q --network none \
  --build-arg "BASE_IMAGE=$base" --label "execbox.inputs=$inputs_hash" \
  -t "$image" "$ctx" >"$cache/build.log" 2>&1; then
  tail -n 40 "$cache/build.log" >&2
  exit 1
fi
log "built $image (inputs $inputs_hash)."
