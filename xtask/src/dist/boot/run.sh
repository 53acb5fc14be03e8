#!/bin/sh
# Inside the container (systemd is PID 1, private network): install the
# package, exercise the service, purge. Writes KEY=VALUE lines to
# /srv/out/results for xtask to check; the log is /srv/out/run.log.
out=/srv/out/results
r() { printf '%s=%s\n' "$1" "$2" >> "$out"; }
unit=imds-guard.service

# The image this container boots may forbid starting services (Docker-style
# images ship a policy-rc.d that exits 101): this is a booted system, where
# the install must start the guard. (The overlay keeps it from the host.)
rm -f /usr/sbin/policy-rc.d

# A policy written before the install, as cloud-init or Packer would: the
# packaged one with the nobody user allowed too, so that which of the two
# is in force shows. dpkg runs without a terminal and must not ask.
mkdir -p /etc/imds-guard
sed 's/^users = \["root"\]/users = ["root", "nobody"]/' /srv/test/policy.toml > /etc/imds-guard/policy.toml
DEBIAN_FRONTEND=noninteractive dpkg -i /srv/test/imds-guard.deb < /dev/null > /srv/out/dpkg.out 2>&1
r install_rc $?
cat /srv/out/dpkg.out
r enforcing_line "$(grep -c '^imds-guard: enforcing /etc/imds-guard/policy.toml' /srv/out/dpkg.out)"
imds-guard status --config /etc/imds-guard/policy.toml > /dev/null
r status_matches_seeded $?
imds-guard status --config /usr/share/imds-guard/policy.toml > /dev/null
r status_matches_default $?
# Back to the packaged default's verdicts for the denial below (nobody is
# denied again): the policy file is gone, a reload reads the default.
rm /etc/imds-guard/policy.toml
r active "$(systemctl is-active $unit)"
# For the log when something is off: what the agent and systemd said.
systemctl status --no-pager $unit
journalctl -u $unit --no-pager -n 20
r status_text "$(systemctl show -p StatusText --value $unit)"
pid=$(systemctl show -p MainPID --value $unit)
r cap_eff "$(awk '/^CapEff/ {print $2}' /proc/$pid/status)"
r cap_bnd "$(awk '/^CapBnd/ {print $2}' /proc/$pid/status)"
r no_new_privs "$(awk '/^NoNewPrivs/ {print $2}' /proc/$pid/status)"
r seccomp "$(awk '/^Seccomp:/ {print $2}' /proc/$pid/status)"

# A denied connect, in the container's own network namespace: the address
# is on its loopback, and the hook refuses before any packet is built.
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
cg=$(cat /run/imds-test-cgroup)
systemctl reload $unit
r reload_rc $?
sleep 1
journalctl -u $unit EVENT=reload -o export --no-pager | grep -a -E '^(OUTCOME|PRIORITY)=' | sed 's/^/reload_/' >> "$out"
r connect "$(sh -c "echo \$\$ > $cg/cgroup.procs; exec setpriv --reuid=65534 --regid=65534 --clear-groups bash -c 'exec 3<>/dev/tcp/169.254.169.254/80 && echo connected'" 2>&1 | head -n 1)"
sleep 1
journalctl -u $unit EVENT=deny -o export --no-pager | grep -a -E '^[A-Z_]+=' | sed 's/^/deny_/' >> "$out"

imds-guard status --config /usr/share/imds-guard/policy.toml > /dev/null
r status_matches_default_after_reload $?

systemctl stop $unit
r stopped "$(systemctl is-active $unit)"
imds-guard status > /dev/null
r status_after_stop $?

DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r purge_rc $?
r pins_after_purge "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
r unit_after_purge "$(ls /lib/systemd/system/$unit 2>/dev/null | wc -l)"

# An image build forbids starting services with policy-rc.d: the install
# enables the guard for the next boot and starts nothing.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive dpkg -i /srv/test/imds-guard.deb < /dev/null
r policy_rc_install_rc $?
r policy_rc_active "$(systemctl is-active $unit)"
r policy_rc_enabled "$(systemctl is-enabled $unit)"
rm /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r policy_rc_purge_rc $?
r pins_after_second_purge "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
rmdir "$cg"
r done yes
