#!/usr/bin/env bash
# Container tooling for the image tests, on a fresh Debian 12 machine (run as root):
#   1. podman, runc, Debian's OCI registry (docker-registry), debootstrap and htpasswd (apt);
#   2. a project-private podman configuration (containers.conf, registries.conf,
#      storage.conf) that works on these VMs (see docs/images.md);
#   3. a Python base image, localhost/k8sx-base:py<major.minor>: a debootstrap of bookworm
#      minbase + python3, imported into the private podman store.
# Idempotent: every step is skipped when its result already exists, so a second run takes
# a second. The tests find everything through the same directory (K8SX_CONTAINERS_DIR or
# its default below); nothing needs to be exported.
set -euo pipefail

dir="${K8SX_CONTAINERS_DIR:-${HOME}/.cache/k8s-executor/containers}"
base_ref="localhost/k8sx-base:py3.11"
# apache2-utils: htpasswd, for the tests of a registry that requires a login.
packages=(podman runc docker-registry debootstrap apache2-utils)

# Timings in microseconds from bash's own clock (no bc/python needed on a bare machine).
now() { echo "${EPOCHREALTIME/./}"; }
step() {
  local us=$(($(now) - $2))
  printf 'containers: %-56s %4d.%01ds\n' "$1" $((us / 1000000)) $((us % 1000000 / 100000))
}
t0=$(now)

# --- 1. packages ---------------------------------------------------------------------------
t=$(now)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "containers: missing ${missing[*]}; run this script as root (it uses apt-get)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Recommends included: that is the podman set machine.md measured as working here.
  apt-get install -y -qq "${missing[@]}" >/dev/null
  step "apt-get install ${missing[*]}" "$t"
else
  step "packages already installed" "$t"
fi

# --- 2. configuration ----------------------------------------------------------------------
mkdir -p "$dir/storage" "$dir/run"
# runc + cgroupfs: crun fails on these hosts' hybrid cgroups; the nofile/nproc ulimits must
# stay under the VM's hard limit (20000) or runc's setrlimit is refused.
cat >"$dir/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
# No search registries: nothing is ever pulled from the internet by a short name. The test
# fixtures write their own copy of this file with the loopback registry's port added.
cat >"$dir/registries.conf" <<'EOF'
unqualified-search-registries = []
EOF
# A private store, so tests never touch (or depend on) the machine's own images.
cat >"$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
EOF
export CONTAINERS_CONF="$dir/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$dir/registries.conf"
export CONTAINERS_STORAGE_CONF="$dir/storage.conf"

# --- 3. the Python base image --------------------------------------------------------------
tarball="$dir/k8sx-base-py3.11.tar"
if [ ! -s "$tarball" ]; then
  t=$(now)
  # Debian's mirror exactly as apt is configured here (the only archive reachable in CI).
  mirror=$(grep -rhoE '^(URIs:|deb)[[:space:]]+[^[:space:]]*debian\.org/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    awk '{print $2}' | head -n1 || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$dir/rootfs.tmp"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
    { tail -n 30 "$dir/debootstrap.log" >&2; exit 1; }
  # Smaller image: apt lists and caches are not needed to run Python.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  step "debootstrap bookworm + python3 ($mirror)" "$t"
fi
t=$(now)
if ! podman image exists "$base_ref"; then
  podman import --quiet --change 'CMD ["/usr/bin/python3"]' "$tarball" "$base_ref" >/dev/null
  step "podman import $base_ref" "$t"
fi
t=$(now)
version=$(podman run --rm --network host "$base_ref" /usr/bin/python3 -c \
  'import sys; print("%d.%d.%d" % sys.version_info[:3])')
step "base image runs python $version" "$t"
step "total" "$t0"
echo "containers: config in $dir"
