//! Endpoints with ports (issue 20): an address the policy protects on some
//! ports only keeps its other ports open to everyone, over TCP and UDP,
//! through the connect and sendmsg hooks and the per-packet program; a
//! packet whose port cannot be read (a fragment after the first) counts
//! as going to a protected port.
//!
//! The fake metadata service answers HTTP on TCP 80 and counts UDP
//! datagrams on 5353 at both metadata addresses. Each test first shows
//! the path works without the guard, then that the guard refuses exactly
//! the protected port.

use std::net::{IpAddr, SocketAddr};

use imds_guard_e2e::{Action, Attack, IMDS_PORT, IMDS_V4, NOBODY, Sandbox, UDP_PORT};

use super::{EPERM, count_events, imds_v4, imds_v6, record_for, str_field, u64_field};

/// TCP 80 of both metadata addresses, for uid 1001 only.
const TCP_80: &str = r#"
mode = "enforce"
[endpoints]
addresses = ["169.254.169.254:80/tcp", "[fd00:ec2::254]:80/tcp"]
[allow]
uids = [1001]
"#;

/// UDP 5353 of both metadata addresses, for uid 1001 only.
const UDP_5353: &str = r#"
mode = "enforce"
[endpoints]
addresses = ["169.254.169.254:5353/udp", "[fd00:ec2::254]:5353/udp"]
[allow]
uids = [1001]
"#;

fn udp(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, UDP_PORT)
}

/// Everything the tests try, as nobody: the credentials over TCP 80 and
/// a datagram to UDP 5353, on both addresses.
fn unguarded_paths_work(sb: &Sandbox) {
    let nobody = sb.probe_as(NOBODY, NOBODY);
    for ip in [imds_v4(), imds_v6()] {
        let r = nobody.run(Action::http(ip, IMDS_PORT));
        assert_eq!(r.assert_ok().body, sb.imds.credentials_body(), "{ip}");
        let before = sb.imds.udp_received(udp(ip));
        nobody.run(Action::udp_send(ip, UDP_PORT)).assert_ok();
        nobody.run(Action::udp_connect(ip, UDP_PORT)).assert_ok();
        assert_eq!(sb.imds.udp_received(udp(ip)), before + 2, "{ip}");
    }
}

#[test]
fn a_tcp_port_is_refused_and_the_udp_neighbour_stays_open() {
    if !imds_guard_e2e::privileged_or_skip("a_tcp_port_is_refused_and_the_udp_neighbour_stays_open")
    {
        return;
    }
    let mut sb = Sandbox::new();
    unguarded_paths_work(&sb);
    sb.policy(TCP_80);
    sb.guard(&[]);
    let nobody = sb.probe_as(NOBODY, NOBODY);
    for ip in [imds_v4(), imds_v6()] {
        let served = sb.imds.requests_served();
        for action in [
            Action::connect(ip, IMDS_PORT),
            Action::http(ip, IMDS_PORT),
            Action::tfo(ip, IMDS_PORT),
        ] {
            let r = nobody.run(action);
            assert!(
                !r.ok && r.errno == Some(EPERM),
                "{action}: expected EPERM, got {r:?}"
            );
        }
        assert_eq!(sb.imds.requests_served(), served, "{ip}");
        // The neighbouring port, UDP, of the same address: open, and
        // not judged (no record).
        let before = sb.imds.udp_received(udp(ip));
        nobody.run(Action::udp_send(ip, UDP_PORT)).assert_ok();
        nobody.run(Action::udp_connect(ip, UDP_PORT)).assert_ok();
        assert_eq!(sb.imds.udp_received(udp(ip)), before + 2, "{ip}");
    }
    // Another TCP port of the address is open too (nothing listens: the
    // connection is refused by the peer, not by the guard).
    let r = nobody.run(Action::connect(imds_v4(), 8080));
    assert_ne!(r.errno, Some(EPERM), "{r:?}");
    // The mapped form of the IPv4 address follows its ports.
    let r = nobody.run(Action::connect_mapped(IMDS_V4, IMDS_PORT));
    assert!(!r.ok && r.errno == Some(EPERM), "{r:?}");
    // The allowed uid still gets the credentials.
    let r = sb
        .probe_as(1001, 1001)
        .run(Action::http(imds_v4(), IMDS_PORT));
    assert_eq!(r.assert_ok().body, sb.imds.credentials_body());
    // status reads the endpoints from the programs' maps, ports and all.
    let (_, status) = sb.status();
    assert_eq!(
        status["endpoints"],
        serde_json::json!(["169.254.169.254:80/tcp", "[fd00:ec2::254]:80/tcp"]),
        "{status}"
    );
    // The record names the port.
    let r = nobody.run(Action::connect(imds_v4(), IMDS_PORT));
    let rec = record_for(&sb, "deny", &r);
    assert_eq!(str_field(&rec, "dst"), "169.254.169.254", "{rec}");
    assert_eq!(u64_field(&rec, "port"), u64::from(IMDS_PORT), "{rec}");
}

#[test]
fn a_udp_port_is_refused_and_the_tcp_neighbour_stays_open() {
    if !imds_guard_e2e::privileged_or_skip("a_udp_port_is_refused_and_the_tcp_neighbour_stays_open")
    {
        return;
    }
    let mut sb = Sandbox::new();
    unguarded_paths_work(&sb);
    sb.policy(UDP_5353);
    sb.guard(&[]);
    let nobody = sb.probe_as(NOBODY, NOBODY);
    for ip in [imds_v4(), imds_v6()] {
        let before = sb.imds.udp_received(udp(ip));
        for action in [
            Action::udp_send(ip, UDP_PORT),
            Action::udp_connect(ip, UDP_PORT),
        ] {
            let r = nobody.run(action);
            assert!(
                !r.ok && r.errno == Some(EPERM),
                "{action}: expected EPERM, got {r:?}"
            );
        }
        assert_eq!(sb.imds.udp_received(udp(ip)), before, "{ip}");
        // TCP 80 of the same address: the credentials, for anyone.
        let r = nobody.run(Action::http(ip, IMDS_PORT));
        assert_eq!(r.assert_ok().body, sb.imds.credentials_body(), "{ip}");
    }
    let r = nobody.run(Action::udp_send_mapped(IMDS_V4, UDP_PORT));
    assert!(!r.ok && r.errno == Some(EPERM), "{r:?}");
    // The allowed uid's datagram arrives.
    let before = sb.imds.udp_received(udp(imds_v4()));
    sb.probe_as(1001, 1001)
        .run(Action::udp_send(imds_v4(), UDP_PORT))
        .assert_ok();
    assert_eq!(sb.imds.udp_received(udp(imds_v4())), before + 1);
    // What the neighbouring port let through was never judged.
    assert_eq!(count_events(&sb, "allow"), 0);
}

#[test]
fn a_fragment_after_the_first_counts_as_going_to_a_protected_port() {
    if !imds_guard_e2e::privileged_or_skip(
        "a_fragment_after_the_first_counts_as_going_to_a_protected_port",
    ) {
        return;
    }
    let mut sb = Sandbox::new();
    let dst = udp(imds_v4());
    let raw = sb.probe_as(NOBODY, NOBODY).caps(&["net_raw"]);
    let fragments = Action::attack(Attack::fragments(dst));
    // Unguarded: both fragments leave, and the service gets the datagram.
    let before = sb.imds.udp_received(dst);
    raw.run(fragments).assert_ok();
    assert_eq!(sb.imds.udp_received(dst), before + 1, "reassembled");
    // Guarded on TCP 80 only: UDP 5353 is a neighbouring port, and a
    // whole datagram to it goes through; the first fragment names it and
    // leaves, the second names no port, is judged as going to a protected
    // one, and is refused: the datagram never completes.
    sb.policy(TCP_80);
    sb.guard(&[]);
    raw.run(Action::udp_send(imds_v4(), UDP_PORT)).assert_ok();
    assert_eq!(sb.imds.udp_received(dst), before + 2);
    let r = raw.run(fragments);
    assert!(!r.ok && r.errno == Some(EPERM), "{r:?}");
    assert!(r.error.contains("second fragment"), "{r:?}");
    assert_eq!(sb.imds.udp_received(dst), before + 2, "{r:?}");
    let rec = record_for(&sb, "deny", &r);
    assert_eq!(str_field(&rec, "hook"), "egress", "{rec}");
}

#[test]
fn auto_on_a_faked_dmi_directory_picks_gce_and_leaves_its_dns_open() {
    if !imds_guard_e2e::privileged_or_skip(
        "auto_on_a_faked_dmi_directory_picks_gce_and_leaves_its_dns_open",
    ) {
        return;
    }
    let sb = Sandbox::new();
    unguarded_paths_work(&sb);
    let dmi = sb.dir.path().join("dmi");
    std::fs::create_dir_all(&dmi).unwrap_or_else(|e| panic!("{e}"));
    for (file, value) in [
        ("sys_vendor", "Google\n"),
        ("product_name", "Google Compute Engine\n"),
    ] {
        std::fs::write(dmi.join(file), value).unwrap_or_else(|e| panic!("{e}"));
    }
    sb.policy("[endpoints]\npresets = [\"auto\"]\n[allow]\nuids = [1001]\n");
    let dmi = dmi.to_str().unwrap_or_else(|| panic!("utf-8"));
    let agent = sb.spawn_agent(&[], &[("IMDS_GUARD_DMI_ROOT", dmi)]);
    let ready = agent.wait_ready(imds_guard_e2e::LOG);
    let said = |name: &str| {
        imds_guard_e2e::field(&ready, name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("no {name} in {ready}"))
            .to_owned()
    };
    assert!(
        said("presets").starts_with("gcp (auto: DMI sys_vendor=\"Google\""),
        "{ready}"
    );
    assert_eq!(said("endpoints"), "169.254.169.254:80/tcp", "{ready}");
    let (_, status) = sb.status();
    assert_eq!(
        status["endpoints"],
        serde_json::json!(["169.254.169.254:80/tcp"]),
        "{status}"
    );
    // GCE's metadata server: HTTP refused, its other ports (DNS, NTP
    // there; the fake's UDP here) open, and fd00:ec2::254 is not GCE's.
    let nobody = sb.probe_as(NOBODY, NOBODY);
    let r = nobody.run(Action::http(imds_v4(), IMDS_PORT));
    assert!(!r.ok && r.errno == Some(EPERM), "{r:?}");
    let before = sb.imds.udp_received(udp(imds_v4()));
    nobody
        .run(Action::udp_send(imds_v4(), UDP_PORT))
        .assert_ok();
    assert_eq!(sb.imds.udp_received(udp(imds_v4())), before + 1);
    let r = nobody.run(Action::http(imds_v6(), IMDS_PORT));
    assert_eq!(r.assert_ok().body, sb.imds.credentials_body());
    drop(agent);
}
