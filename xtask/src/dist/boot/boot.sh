#!/bin/sh
# Host side, run in a private mount namespace (unshare -m): boot this
# machine's own system, on a throw-away overlay of /, in systemd-nspawn,
# with a private network, and run imds-test.service in it. $1: the test
# directory (this script, the .deb), $2: the output directory, $3: an empty
# directory for the overlay (a tmpfs in this namespace only).
set -eu
test_dir=$1
out_dir=$2
ovl=$3
mount -t tmpfs tmpfs "$ovl"
mkdir "$ovl/upper" "$ovl/work" "$ovl/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$ovl/upper,workdir=$ovl/work" "$ovl/root"
# A machine id of its own: journald refuses to link to the host's.
tr -d - < /proc/sys/kernel/random/uuid > "$ovl/root/etc/machine-id"
cp "$test_dir/imds-test.service" "$ovl/root/etc/systemd/system/"
mkdir -p "$ovl/root/etc/systemd/system/imds-guard.service.d"
cp "$test_dir/test.conf" "$ovl/root/etc/systemd/system/imds-guard.service.d/"
# systemd mounts the bpf file system on a booted host; nspawn gives the
# container none of its own, so lend it one (private to this namespace).
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
# nspawn's seccomp filter refuses bpf(2) unless asked; CAP_NET_ADMIN comes
# with --private-network.
exec timeout 300 systemd-nspawn --quiet --directory="$ovl/root" \
    --private-network --register=no --keep-unit --link-journal=no --console=pipe \
    --capability=CAP_BPF,CAP_PERFMON --system-call-filter=bpf \
    --bind=/sys/fs/bpf --bind-ro="$test_dir:/srv/test" --bind="$out_dir:/srv/out" \
    --boot -- --unit=imds-test.service
