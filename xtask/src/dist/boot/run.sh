#!/bin/sh
# Inside the container (systemd is PID 1, private network): install the
# package, exercise the service, purge. Writes KEY=VALUE lines to
# /srv/out/results for xtask to check; the log is /srv/out/run.log.
out=/srv/out/results
r() { printf '%s=%s\n' "$1" "$2" >> "$out"; }
unit=imds-guard.service

DEBIAN_FRONTEND=noninteractive dpkg -i /srv/test/imds-guard.deb
r install_rc $?
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
r connect "$(sh -c "echo \$\$ > $cg/cgroup.procs; exec setpriv --reuid=65534 --regid=65534 --clear-groups bash -c 'exec 3<>/dev/tcp/169.254.169.254/80 && echo connected'" 2>&1 | head -n 1)"
sleep 1
journalctl -u $unit EVENT=deny -o export --no-pager | grep -a -E '^[A-Z_]+=' | sed 's/^/deny_/' >> "$out"

systemctl reload $unit
r reload_rc $?
sleep 1
journalctl -u $unit EVENT=reload -o export --no-pager | grep -a -E '^(OUTCOME|PRIORITY)=' | sed 's/^/reload_/' >> "$out"

systemctl stop $unit
r stopped "$(systemctl is-active $unit)"
imds-guard status > /dev/null
r status_after_stop $?

DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r purge_rc $?
r pins_after_purge "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
r unit_after_purge "$(ls /lib/systemd/system/$unit 2>/dev/null | wc -l)"
rmdir "$cg"
r done yes
