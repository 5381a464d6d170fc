#!/usr/bin/env bash
# Make sure a CRIU >= 4.2 is available at $EXECBOX_CRIU_PREFIX/bin/criu (default /opt/execbox/criu), for
# checkpoint/restore of warm kernels. Debian bookworm's criu 3.17 fails `criu check` (vDSO) on new kernels and
# trixie's 4.1.1 cannot dump AF_INET sockets on kernels >= 6.16 (CRIU #2705/#2718), so we take criu from sid.
# sid's criu needs sid's glibc, so the package closure is unpacked into a private tree and run with that tree's own
# loader: the host's packages, dpkg database, apt lists and libc are never touched.
# Exit 0: criu installed and `criu check` passes. Exit 3 (one-line reason): restore unavailable; callers then
# boot kernels instead, so this is not a build failure. Set EXECBOX_CRIU_FORCE=1 to reinstall anyway.
set -Eeuo pipefail

MIN_VERSION=4.2
SUITE_URL="http://deb.debian.org/debian sid main"
prefix=${EXECBOX_CRIU_PREFIX:-/opt/execbox/criu}
wrapper="$prefix/bin/criu"

log() { printf '[ensure-criu] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 3; }
# Any unexpected error still means "restore unavailable" (exit 3), never apt-get's or dpkg's own status.
trap 'fail "command failed at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || fail "must run as root (it writes $prefix)"
for tool in apt-get apt-cache dpkg-deb dpkg flock; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found: this script needs a Debian host"
done
[ "$(dpkg --print-architecture)" = amd64 ] || fail "only amd64 is supported (host is $(dpkg --print-architecture))"

installed_version() { # prints the version of the criu behind wrapper $1, or nothing
  { "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n 1; } || true
}
version_ok() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$MIN_VERSION"; }

# `criu check` also covers the kernel side restore needs (namespaces, vDSO, seccomp, memfd, ...).
run_check() {
  local out bnd
  if out=$("$wrapper" check 2>&1); then
    log "criu check: ${out//$'\n'/ | }"
  else
    printf '%s\n' "$out" | sed 's/^/[ensure-criu]   /' >&2
    fail "'$wrapper check' failed (output above): checkpoint/restore is unavailable on this host"
  fi
  # Without CAP_SYS_RESOURCE in root's bounding set (as in some VMs) CRIU cannot prlimit() a task of another
  # uid: dumps of processes that dropped to a sandbox uid fail, so templates must be dumped before dropping.
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( 16#$bnd >> 24 & 1 )) || log "note: no CAP_SYS_RESOURCE in the bounding set: only uid-0 tasks can be dumped here"
  log "CRIU $(installed_version "$wrapper") ready: $wrapper"
}

mkdir -p "$prefix/bin"
# Serialise concurrent runs (e.g. two services starting at once) so they don't unpack over each other.
exec 9>"$prefix/.lock"
flock 9

rm -rf "$prefix"/.stage.*  # left by a run that was killed
have=$(installed_version "$wrapper")
if version_ok "$have" && [ "${EXECBOX_CRIU_FORCE:-0}" != 1 ]; then
  # Already installed: no network. A failing check here is the kernel's, which a reinstall would not fix.
  log "CRIU $have already installed at $prefix"
  run_check
  exit 0
fi
log "Installing CRIU >= $MIN_VERSION from Debian sid into $prefix (found: ${have:-none})"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ensure-criu.XXXXXX")
stage=$(mktemp -d "$prefix/.stage.XXXXXX")
trap 'rm -rf "$tmp" "$stage"' EXIT
# apt downloads as user _apt: it must be able to reach the lists and download dirs.
chmod 755 "$tmp"
mkdir -p "$tmp/lists/partial" "$tmp/cache" "$tmp/empty" "$tmp/debs"
chown _apt "$tmp/lists/partial" "$tmp/debs" 2>/dev/null || true
echo "deb $SUITE_URL" >"$tmp/sources.list"
# A private apt configuration: our own sources, lists, cache, and an empty dpkg status so the host's installed
# packages play no part. The host's apt.conf.d is not read, so none of its update hooks (appstream, packagekit)
# run; its Acquire settings (proxies, date checks) are carried over.
{
  apt-config dump Acquire | grep -v '^Acquire::IndexTargets' || true
  cat <<EOF
Dir::Etc::parts "$tmp/empty"; Dir::Etc::main "/dev/null";
Dir::Etc::sourcelist "$tmp/sources.list"; Dir::Etc::sourceparts "$tmp/empty";
Dir::Etc::preferences "/dev/null"; Dir::Etc::preferencesparts "$tmp/empty";
Dir::State "$tmp"; Dir::State::Lists "$tmp/lists"; Dir::State::status "/dev/null";
Dir::Cache "$tmp/cache"; Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT::Architecture "amd64"; #clear APT::Architectures; APT::Architectures { "amd64"; };
#clear Acquire::Languages; Acquire::Languages { "none"; };
EOF
} >"$tmp/apt.conf"
export APT_CONFIG="$tmp/apt.conf"

apt-get -qq update >"$tmp/update.log" 2>&1 || { cat "$tmp/update.log" >&2; fail "apt-get update of sid failed"; }
candidate=$(apt-cache policy criu | sed -n 's/^ *Candidate: *//p')
version_ok "$candidate" || fail "sid offers criu '${candidate:-none}', need >= $MIN_VERSION"
# The closure is resolved on every install because sid moves. Lines without indentation are the packages;
# virtual ones are printed as <name> and other architectures as name:arch, and neither can be downloaded.
mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances criu | grep -E '^[a-z0-9][a-z0-9+.-]*$' | sort -u)
log "criu $candidate and ${#pkgs[@]} packages in its closure: ${pkgs[*]}"
(cd "$tmp/debs" && apt-get -qq download "${pkgs[@]}") >"$tmp/download.log" 2>&1 \
  || { cat "$tmp/download.log" >&2; fail "apt-get download failed"; }
for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$stage/root"; done

# Write a wrapper for tree $2 to $1. ld.so's --library-path (unlike LD_LIBRARY_PATH) does not leak into the
# host tools criu runs (iptables, ip, tar); CRIU_LIBS_DIR keeps criu from loading a host criu's plugins.
write_wrapper() {
  local r=$2 ld=$2/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  [ -x "$ld" ] || ld=$r/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  [ -x "$ld" ] || fail "no ld-linux-x86-64.so.2 in the unpacked tree"
  mkdir -p "$r/usr/lib/criu"
  cat >"$1.tmp" <<EOF
#!/bin/sh
# Written by scripts/ensure-criu.sh: Debian sid's criu with its own glibc, loader and libraries.
CRIU_LIBS_DIR='$r/usr/lib/criu' exec '$ld' --library-path '$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu' '$r/usr/sbin/criu' "\$@"
EOF
  chmod 755 "$1.tmp" && mv -f "$1.tmp" "$1"
}

# Try the staged tree before it replaces a working one.
write_wrapper "$stage/criu" "$stage/root"
got=$(installed_version "$stage/criu")
version_ok "$got" || fail "unpacked criu does not run or reports '${got:-nothing}'"
rm -rf "$prefix/root.old" && { [ ! -d "$prefix/root" ] || mv "$prefix/root" "$prefix/root.old"; }
mv "$stage/root" "$prefix/root"
write_wrapper "$wrapper" "$prefix/root"
rm -rf "$prefix/root.old"
log "Installed CRIU $got ($(du -sh "$prefix/root" | cut -f1))"
run_check
