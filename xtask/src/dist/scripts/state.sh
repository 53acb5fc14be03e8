# imds_guard_state: one line saying what is in force (imds-guard status
# --short: the mode and the policy file, the FALLBACK policy and why, or
# that nothing is), and why the service is not running when it is not.
# Shared by the .deb's postinst and the .rpm's scriptlets (xtask puts it
# where they ask for it: xtask/src/dist/scripts.rs).
imds_guard_state() {
    if [ ! -d /run/systemd/system ]; then
        echo "imds-guard: nothing is in force here yet: no systemd is running (an image build or a chroot); the service starts at boot if it is enabled"
        return 0
    fi
    state=$(/usr/bin/imds-guard status --short 2>/dev/null) || :
    [ -n "$state" ] || state="imds-guard: what is in force cannot be read (imds-guard status says why)"
    if systemctl --quiet is-active imds-guard.service; then
        why=""
    elif ! systemctl --quiet is-enabled imds-guard.service; then
        why=" (imds-guard.service is disabled, so it was not started: systemctl enable --now imds-guard)"
    elif imds_guard_forbidden; then
        why=" (imds-guard.service was not started: policy-rc.d forbids starting services here; it is enabled and starts at the next boot)"
    else
        why=" (imds-guard.service did not start: journalctl -u imds-guard)"
    fi
    echo "$state$why"
}

# Whether policy-rc.d forbids starting the service (exit 101), as
# deb-systemd-invoke asks it.
imds_guard_forbidden() {
    [ -x /usr/sbin/policy-rc.d ] || return 1
    forbidden=0
    /usr/sbin/policy-rc.d imds-guard.service start >/dev/null 2>&1 || forbidden=$?
    [ "$forbidden" -eq 101 ]
}
