#!/usr/bin/env bash
# Installs the host packages smolvm needs on Debian/Ubuntu, idempotently.
# Says what it installs; installs nothing that is already present.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }

. /etc/os-release
codename="${VERSION_CODENAME:-}"

qemu_ok() {
  have qemu-system-x86_64 || return 1
  local major
  major=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
  [ "${major:-0}" -ge 9 ]
}

if ! qemu_ok; then
  if [ "$ID" = "debian" ] && [ "$codename" = "bookworm" ]; then
    src=/etc/apt/sources.list.d/smolvm-backports.sources
    if [ ! -f "$src" ]; then
      log "adding bookworm-backports (QEMU 10) as $src"
      mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
      mirror=${mirror:-http://deb.debian.org/debian}
      keyring=$(sed -n 's/^Signed-By: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
      keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$mirror" "$keyring" | $SUDO tee "$src" >/dev/null
    fi
    log "installing qemu-system-x86 from bookworm-backports"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
      qemu-system-x86 qemu-utils >/dev/null
  else
    need_pkgs+=(qemu-system-x86 qemu-utils)
  fi
fi

have qemu-img || need_pkgs+=(qemu-utils)
have mkfs.ext4 || need_pkgs+=(e2fsprogs)
have debugfs || need_pkgs+=(e2fsprogs)
have cpio || need_pkgs+=(cpio)
have lz4 || need_pkgs+=(lz4)
have apt-get || { log "apt-get not found: smolvm's set-up supports Debian/Ubuntu only"; exit 1; }
have dpkg-deb || need_pkgs+=(dpkg)
have debootstrap || need_pkgs+=(debootstrap)
have gcc || need_pkgs+=(gcc)

# Image builds fetch the guest kernel and busybox with apt-get download,
# which needs package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || ! apt-cache show busybox-static >/dev/null 2>&1; then
  log "refreshing apt package lists (needed to fetch the guest kernel)"
  $SUDO apt-get update -qq
fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
else
  log "host packages already present"
fi

if ! have cargo; then
  log "cargo not found: install Rust from https://rustup.rs and run this again"
  exit 1
fi
log "qemu: $(qemu-system-x86_64 --version | head -n1)"
