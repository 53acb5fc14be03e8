#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest (see xtask/src/vm.rs).
#
# Sets up what the privileged tests expect of a host (proc, sys, devtmpfs,
# cgroup2 (with NO_CGROUP2=1: cgroup v1 hierarchies only), bpffs,
# /var/run/netns on a tmpfs, loopback up), then runs each
# suite with --test-threads=1 and CI=true. Results go to the virtio serial
# port named imds-guard.results, which the host writes to a file:
# "@vm start SUITE", libtest's
# JSON events, "@vm exit SUITE CODE", and "@vm done" at the end. Progress and
# the tests' stray stderr go to the serial console. The guest then resets,
# which ends QEMU (-no-reboot).

bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /run /tmp /busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
# busybox's applets last on PATH: the packages' tools take precedence.
$bb --install -s /busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/busybox
export HOME=/root TMPDIR=/tmp

say() { echo "vm: $*" >/dev/console; }
end() {
    sync
    say "$1"
    reboot -f
    sleep 5
    echo b >/proc/sysrq-trigger
}

say "init reached on $(uname -r) $(uname -m)"
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
chmod 1777 /tmp
mkdir -p /var
rm -rf /var/run
ln -s /run /var/run
# Not mounted at boot on Debian without systemd; the tests use a private
# one of their own, the agent's default pins go here.
mount -t bpf bpf /sys/fs/bpf || say "cannot mount bpffs"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname "$(cat /etc/hostname)"
ip link set lo up
# What the packet-path tests build that the cloud kernels have as modules
# and no udev loads here: TUN devices (/dev/net/tun appears with the
# module), veth pairs, and MPTCP's and UDP-Lite's sockets are built in.
for m in tun veth; do
    modprobe "$m" 2>/dev/null || say "cannot load module $m"
done

# The results port: virtio_console (which also drives plain ports) is a
# module on 6.1 cloud kernels, and QEMU names its ports after the driver
# is up, so look until it appears.
modprobe virtio_pci 2>/dev/null
modprobe virtio_console 2>/dev/null
port=
i=0
while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
        if [ "$(cat "$p/name" 2>/dev/null)" = imds-guard.results ] && [ -c "/dev/${p##*/}" ]; then
            port="/dev/${p##*/}"
        fi
    done
    if [ -z "$port" ]; then
        if [ $i -ge 300 ]; then
            end "no imds-guard.results port: no way to report results"
        fi
        sleep 0.1
        i=$((i + 1))
    fi
done
report() { echo "$*" >"$port"; }

# SUITES, SLOWDOWN, SUITE_TIMEOUT, NO_CGROUP2, PROGRAMS, and the libtest
# arguments as "$@".
. /vm/env
# vm-test --programs: the build every agent (and the kernel suite's own
# loads) takes, whatever the kernel's features choose.
if [ -n "$PROGRAMS" ]; then
    export IMDS_GUARD_PROGRAMS="$PROGRAMS"
fi
if [ "$NO_CGROUP2" = 1 ]; then
    # As Amazon Linux 2 boots (systemd 219): a tmpfs of v1 hierarchies, no
    # cgroup2 anywhere; the agent mounts its own.
    mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
    for h in systemd:none,name=systemd cpu,cpuacct:cpu,cpuacct memory:memory pids:pids; do
        mkdir -p "/sys/fs/cgroup/${h%%:*}"
        mount -t cgroup -o "${h#*:}" cgroup "/sys/fs/cgroup/${h%%:*}" ||
            say "cannot mount the cgroup v1 hierarchy ${h%%:*}"
    done
else
    mount -t cgroup2 cgroup2 /sys/fs/cgroup || say "cannot mount cgroup2"
fi
say "unprivileged_bpf_disabled=$(cat /proc/sys/kernel/unprivileged_bpf_disabled)" \
    "btf=$([ -e /sys/kernel/btf/vmlinux ] && echo yes || echo no)" \
    "IMDS_GUARD_TEST_SLOWDOWN=$SLOWDOWN" "IMDS_GUARD_PROGRAMS=${PROGRAMS:-(the kernel's choice)}"

cd /tmp
for suite in $SUITES; do
    say "suite $suite"
    report "@vm start $suite"
    # RUSTC_BOOTSTRAP lets a stable libtest print JSON (-Z unstable-options).
    # IMDS_GUARD_TEST_GUEST: this root is disposable, its cgroup root the
    # tests' own (the kubernetes suite's runc test attaches there).
    env CI=true RUST_BACKTRACE=1 RUSTC_BOOTSTRAP=1 IMDS_GUARD_TEST_GUEST=1 \
        IMDS_GUARD_TEST_IMAGE=/vm/image.oci.tar \
        IMDS_GUARD_TEST_SLOWDOWN="$SLOWDOWN" IMDS_GUARD_TEST_NO_CGROUP2="$NO_CGROUP2" \
        IMDS_GUARD_BIN=/vm/bin/imds-guard IMDS_PROBE_BIN=/vm/bin/imds-probe \
        timeout "$SUITE_TIMEOUT" "/vm/tests/$suite" --test-threads=1 \
        -Z unstable-options --format=json --report-time "$@" >"$port" 2>/dev/console
    code=$?
    report "@vm exit $suite $code"
    say "suite $suite exited $code"
done
report "@vm done"
end "done"
