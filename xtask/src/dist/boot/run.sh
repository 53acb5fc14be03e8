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
# Installs the package again (an upgrade, or a reinstall), without a
# terminal; its output is kept in /srv/out/dpkg-$1.out and shown in the log.
install_deb() {
    DEBIAN_FRONTEND=noninteractive dpkg -i /srv/test/imds-guard.deb < /dev/null > "/srv/out/dpkg-$1.out" 2>&1
    rc=$?
    cat "/srv/out/dpkg-$1.out"
    return $rc
}
# How many lines of dpkg's output for step $1 start with $2.
said() { awk -v p="$2" 'index($0, p) == 1 { n++ } END { print n + 0 }' "/srv/out/dpkg-$1.out"; }
broken='[allow]
uids = ["x"]
'
# The agent's warnings and errors in the journal: what `-p warning` shows.
# Matched by unit or by the identifier systemd gave the service's output
# stream: journald finds a line's unit from the sender's cgroup, which a
# process that exits at once may have left before the line is read.
warnings() {
    journalctl -p warning -o cat --no-pager _SYSTEMD_UNIT=$unit + SYSLOG_IDENTIFIER=imds-guard
}
# How many of the warnings match $1, once more than $2 do or 10 s have
# passed: journald writes a stream's lines a moment after they were sent.
warnings_past() {
    for _ in $(seq 50); do
        n=$(warnings | grep -c -- "$1")
        [ "$n" -gt "$2" ] && break
        sleep 0.2
    done
    echo "$n"
}

install_deb first
r install_rc $?
r enforcing_line "$(said first 'imds-guard: enforcing /etc/imds-guard/policy.toml (sha256 ')"
imds-guard status --config /etc/imds-guard/policy.toml > /dev/null
r status_matches_seeded $?
imds-guard status --config /usr/share/imds-guard/policy.toml > /dev/null
r status_matches_default $?
# Back to the packaged default's verdicts for the denial below (nobody is
# denied again): the policy file is gone, a reload reads the default.
rm /etc/imds-guard/policy.toml
r active "$(systemctl is-active $unit)"
# The status file, as a monitor that is not root reads it: the agent writes
# it just after it says it is ready.
sf=/run/imds-guard/status.json
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
for _ in $(seq 50); do [ -e $sf ] && break; sleep 0.1; done
r status_file_mode "$(stat -c %a $sf 2>&1)"
r status_file_running "$(as_nobody cat $sf | grep -c '"state":"running"')"
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
journalctl -u $unit EVENT=reload -o export --no-pager | grep -a -E '^(OUTCOME|PRIORITY)=' | sed 's/^/reload_/' >> "$out"
# A policy that does not validate: `systemctl reload` fails (ExecReload
# waits for the agent's answer), the journal says where at warning
# priority, and the policy in force stays.
printf '%s' "$broken" > /etc/imds-guard/policy.toml
systemctl reload $unit
r refused_reload_rc $?
r refused_reload_warning "$(warnings_past '^/etc/imds-guard/policy.toml:2:9: ' 0)"
r refused_reload_active "$(systemctl is-active $unit)"
rm /etc/imds-guard/policy.toml
r connect "$(sh -c "echo \$\$ > $cg/cgroup.procs; exec setpriv --reuid=65534 --regid=65534 --clear-groups bash -c 'exec 3<>/dev/tcp/169.254.169.254/80 && echo connected'" 2>&1 | head -n 1)"
sleep 1
journalctl -u $unit EVENT=deny -o export --no-pager | grep -a -E '^[A-Z_]+=' | sed 's/^/deny_/' >> "$out"

imds-guard status --config /usr/share/imds-guard/policy.toml > /dev/null
r status_matches_default_after_reload $?

systemctl stop $unit
r stopped "$(systemctl is-active $unit)"
r status_file_stopped "$(as_nobody cat $sf | grep -c '"state":"stopped"')"
imds-guard status > /dev/null
r status_after_stop $?

# An upgrade while the service is stopped starts it, as dh_installsystemd's
# postinst does, and says what is in force.
install_deb upgrade-stopped
r upgrade_stopped_active "$(systemctl is-active $unit)"
r upgrade_stopped_line "$(said upgrade-stopped 'imds-guard: enforcing /usr/share/imds-guard/policy.toml (sha256 ')"

# A policy that does not validate while a guard is pinned: the agent exits
# 1 (not restarted), the journal says where at warning priority and that
# the pinned guard keeps enforcing, which it does.
systemctl stop $unit
printf '%s' "$broken" > /etc/imds-guard/policy.toml
before=$(warnings | grep -c '^/etc/imds-guard/policy.toml:2:9: ')
systemctl start $unit
r broken_start_active "$(systemctl is-active $unit)"
r broken_start_where "$(($(warnings_past '^/etc/imds-guard/policy.toml:2:9: ' "$before") - before))"
r broken_start_kept "$(warnings_past 'keeps enforcing the policy last put in force' 0)"
imds-guard status > /dev/null
r status_after_broken_start $?
rm /etc/imds-guard/policy.toml

# An upgrade while the service has failed starts it.
install_deb upgrade-failed
r upgrade_failed_active "$(systemctl is-active $unit)"

DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r purge_rc $?
r pins_after_purge "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
r unit_after_purge "$(ls /lib/systemd/system/$unit 2>/dev/null | wc -l)"

# Installing over a policy that does not validate, with nothing pinned: the
# fallback is in force, and the line says so and why, not "enforcing".
printf '%s' "$broken" > /etc/imds-guard/policy.toml
install_deb fallback
r fallback_active "$(systemctl is-active $unit)"
r fallback_line "$(said fallback 'imds-guard: FALLBACK policy in force (the built-in one: root on the host only, enforce mode): the policy file does not validate: /etc/imds-guard/policy.toml:2:9: ')"
r fallback_enforcing "$(grep -c 'enforcing' /srv/out/dpkg-fallback.out)"

# Over a policy in audit mode, an upgrade says it audits.
printf 'mode = "audit"\n[allow.host]\nusers = ["root"]\n' > /etc/imds-guard/policy.toml
install_deb audit
r audit_line "$(said audit 'imds-guard: auditing /etc/imds-guard/policy.toml (sha256 ')"

# `apt remove` stops and detaches the guard; installing again (dpkg
# configures it with the version removed) starts it again.
DEBIAN_FRONTEND=noninteractive dpkg -r imds-guard
r remove_rc $?
r pins_after_remove "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
r status_file_after_remove "$(ls /run/imds-guard 2>/dev/null | wc -l)"
install_deb reinstall
r reinstall_active "$(systemctl is-active $unit)"
r reinstall_enabled "$(systemctl is-enabled $unit)"
r reinstall_line "$(said reinstall 'imds-guard: auditing /etc/imds-guard/policy.toml (sha256 ')"
DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r reinstall_purge_rc $?
rm -f /etc/imds-guard/policy.toml

# An image build forbids starting services with policy-rc.d: the install
# enables the guard for the next boot and starts nothing.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
install_deb policy-rc
r policy_rc_install_rc $?
r policy_rc_active "$(systemctl is-active $unit)"
r policy_rc_enabled "$(systemctl is-enabled $unit)"
r policy_rc_line "$(said policy-rc 'imds-guard: nothing is in force: no guard is pinned at /sys/fs/bpf/imds-guard (imds-guard.service was not started: policy-rc.d forbids starting services here; it is enabled and starts at the next boot)')"
rm /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive dpkg --purge imds-guard
r policy_rc_purge_rc $?
r pins_after_second_purge "$(ls /sys/fs/bpf/imds-guard 2>/dev/null | wc -l)"
rmdir "$cg"
r done yes
