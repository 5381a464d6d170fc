#!/usr/bin/env bash
# Prepare offline build contexts under .build/ for docker-compose:
#   .build/sandbox  the sandbox image (Dockerfile, kernel and fork server, wheels)
#   .build/service  the service image (Dockerfile, the project's wheel and its dependencies' wheels)
# and make sure the offline base image exists (as sandbox_images/python/build.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EXECBOX_CACHE_DIR:-/var/cache/execbox}
py=${PYTHON:-python3}
log() { printf '[context] %s\n' "$*" >&2; }

arch=$(uname -m)
plats=()
for v in $(seq 17 36); do plats+=(--platform "manylinux_2_${v}_${arch}"); done
plats+=(--platform "manylinux2014_${arch}")
pipdl() {
  "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${plats[@]}" "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

rm -rf "$root/.build"
mkdir -p "$root/.build/sandbox" "$root/.build/service/wheels" "$cache/wheels"

log "sandbox context ..."
# The same context build.sh builds from (files, hash-pinned lock, wheels).
"$root/sandbox_images/python/build.sh" --context "$root/.build/sandbox"

log "service context ..."
cp "$root/service/Dockerfile" "$root/.build/service/"
"$py" -m pip wheel -q --no-deps --disable-pip-version-check -w "$root/.build/service/wheels" "$root" \
  2> >(grep -v '^WARNING: Location' >&2)
"$py" - "$root/pyproject.toml" > "$root/.build/service/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["server"]))
PY
pipdl -d "$root/.build/service/wheels" -r "$root/.build/service/requirements.txt"

# The base: the offline Debian root build.sh makes and names (python3.11, g++), unless one is given.
if [ -z "${EXECBOX_BASE_IMAGE:-}" ]; then
  EXECBOX_IMAGE=${EXECBOX_IMAGE:-execbox-sandbox-python:latest} "$root/sandbox_images/python/build.sh" >&2
  base=$("$root/sandbox_images/python/build.sh" --base-image)
else
  base=$EXECBOX_BASE_IMAGE
fi
# The same inputs label build.sh puts on the image, so either build counts as up to date.
inputs_hash=$("$root/sandbox_images/python/build.sh" --inputs-hash)
printf 'EXECBOX_BASE_IMAGE=%s\nEXECBOX_SANDBOX_INPUTS=%s\n' "$base" "$inputs_hash" > "$root/.build/.env"
log "contexts ready in .build/ (base $base)"
