#!/bin/sh
# The test cgroup, under the cgroup2 mount (the fs type follows " - " in
# mountinfo; the fields before it vary).
set -e
root=$(awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup2") print $5; break }}' /proc/self/mountinfo | head -n 1)
[ -n "$root" ] || { echo "mkcg: no cgroup2 mount" >&2; exit 1; }
mkdir -p "$root/$(cat /srv/test/cgroup-name)"
echo "$root/$(cat /srv/test/cgroup-name)" > /run/imds-test-cgroup
