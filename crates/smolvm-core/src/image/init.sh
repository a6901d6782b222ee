#!/bin/sh
# smolvm initramfs /init (busybox sh, PID 1).
#
# Loads the virtio/vsock modules listed in /etc/smolvm-modules (dependencies
# first), mounts the root disk and hands over to the root filesystem's init.
# Any failure prints one 'smolvm-initramfs: ...' line on the console and powers
# the VM off, so the host sees the VM exit instead of a hang.
#
# Kernel arguments read here: root= (default /dev/vda), init= (default /sbin/init).

export PATH=/bin

fail() {
    echo "smolvm-initramfs: $*"
    poweroff -f
    # Only reached if power-off is impossible: PID 1 exiting panics the kernel,
    # and panic=-1 reboots, which QEMU -no-reboot and Firecracker treat as exit.
    exit 1
}

mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"
mount -t proc proc /proc || fail "cannot mount proc on /proc"
mount -t sysfs sysfs /sys || fail "cannot mount sysfs on /sys"

root=/dev/vda
init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        init=*) init="${arg#init=}" ;;
    esac
done

while read -r mod; do
    [ -n "$mod" ] || continue
    if ! out=$(insmod "/lib/modules/$mod.ko" 2>&1); then
        case "$out" in
            *"File exists"*) ;;
            *) fail "cannot load kernel module $mod: $out" ;;
        esac
    fi
done < /etc/smolvm-modules

tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || fail "root disk $root did not appear within 10 s (is a virtio-blk device attached?)"
    sleep 0.1
done

mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root (ext4) on /newroot"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "$init not found on the root filesystem $root"
for d in dev proc sys; do
    mkdir -p "/newroot/$d"
    mount --move "/$d" "/newroot/$d" || fail "cannot move /$d into the root filesystem"
done

exec switch_root /newroot "$init"
fail "switch_root to $init failed"
