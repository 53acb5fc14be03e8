//! Two kinds of endpoint (issue 20): a workload endpoint (ECS's task
//! credentials, EKS Pod Identity) stays reachable by the workloads it
//! serves, callers not on the host that nothing denies, while the host's
//! own callers follow the policy there; a host endpoint (the metadata
//! service) still refuses the same workloads. And the ECS recipe of
//! docs/policy.md: tasks keep their credentials and reach neither the
//! metadata service nor the ECS agent's introspection API on the host's
//! loopback, which only the agent's container (by its cgroup) and root
//! on the host may.
//!
//! A "container" here is a probe whose network namespace is not the
//! agent's (a bridged task or pod), or whose user namespace is not (a
//! task on the host's network: its own pid and user namespaces, the
//! host's network); each test first shows every path works unguarded.

use std::net::SocketAddr;

use imds_guard_e2e::{
    Action, ECS_CREDENTIALS, ECS_INTROSPECTION, EKS_POD_IDENTITY_V6, FakeImds, IMDS_PORT, NOBODY,
    Netns, Probe, ProbeResult, Sandbox, TcpService, UserNamespace, cgroup_path,
};

use super::{EPERM, imds_v4, record_for, str_field};

/// The workload presets beside EC2's, uid 1001 allowed, uid 3003 denied.
const WORKLOADS: &str = r#"
mode = "enforce"
[endpoints]
presets = ["aws-ec2", "aws-ecs", "aws-eks-pod-identity"]
[allow]
uids = [1001]
[deny]
uids = [3003]
"#;

fn refused(r: &ProbeResult, what: &str) {
    assert!(
        !r.ok && r.errno == Some(EPERM),
        "{what}: expected EPERM, got {r:?}"
    );
}

fn connect(p: &Probe, to: SocketAddr) -> ProbeResult {
    p.run(Action::connect(to.ip(), to.port()))
}

#[test]
fn a_container_reaches_a_workload_endpoint_that_refuses_the_hosts_callers() {
    if !imds_guard_e2e::privileged_or_skip(
        "a_container_reaches_a_workload_endpoint_that_refuses_the_hosts_callers",
    ) {
        return;
    }
    let mut sb = Sandbox::new();
    let container = Netns::new();
    let _container_imds = FakeImds::start(&container);
    let endpoints = [ECS_CREDENTIALS, EKS_POD_IDENTITY_V6];
    let _services: Vec<TcpService> = [sb.netns_path(), container.path()]
        .into_iter()
        .flat_map(|n| endpoints.map(|e| TcpService::start(n, e)))
        .collect();
    let (guarded, host_net) = (sb.cgroup.path().to_owned(), sb.netns_path().to_owned());
    let in_container = |uid: u32| Probe::at(container.path(), &guarded).uid(uid).gid(uid);
    let on_host = |uid: u32| Probe::at(&host_net, &guarded).uid(uid).gid(uid);
    // Unguarded, everyone reaches everything.
    for p in [on_host(NOBODY), in_container(NOBODY), in_container(3003)] {
        for to in endpoints {
            connect(&p, to).assert_ok();
        }
        p.run(Action::connect(imds_v4(), IMDS_PORT)).assert_ok();
    }
    sb.policy(WORKLOADS);
    sb.guard(&[]);
    // A container that no rule names: its own credentials, over IPv4 and
    // IPv6, and not the host's.
    let nobody = in_container(NOBODY);
    for to in endpoints {
        connect(&nobody, to).assert_ok();
    }
    let r = nobody.run(Action::connect(imds_v4(), IMDS_PORT));
    refused(&r, "a container at the metadata service");
    let rec = record_for(&sb, "deny", &r);
    assert_eq!(str_field(&rec, "place"), "container", "{rec}");
    // The host's callers follow the policy at the workload endpoints.
    for to in endpoints {
        let r = connect(&on_host(NOBODY), to);
        refused(&r, &format!("nobody on the host at {to}"));
        let rec = record_for(&sb, "deny", &r);
        assert_eq!(str_field(&rec, "dst"), to.ip().to_string(), "{rec}");
        connect(&on_host(1001), to).assert_ok();
    }
    // A denied uid is denied there too, in a container.
    for to in endpoints {
        refused(&connect(&in_container(3003), to), "uid 3003 in a container");
    }
    // The port next to it is not the endpoint: nothing judges it.
    let beside = SocketAddr::new(ECS_CREDENTIALS.ip(), 8080);
    let _beside = TcpService::start(sb.netns_path(), beside);
    connect(&on_host(NOBODY), beside).assert_ok();
}

/// The ECS recipe of docs/policy.md as written there, with the agent's
/// container's cgroup as the test makes it (`agent`) for the pattern of
/// docker's.
fn ecs_recipe(agent: &str) -> String {
    const DOCKER: &str = "\"/system.slice/docker-*.scope\"";
    let doc = include_str!("../../../docs/policy.md");
    let part = doc
        .split("\n### Recipe: an ECS container instance\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no ECS recipe in docs/policy.md"));
    let block: Vec<&str> = part
        .lines()
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let recipe = block.join("\n");
    assert!(recipe.contains(DOCKER), "{recipe}");
    format!(
        "mode = \"enforce\"\n{}",
        recipe.replace(DOCKER, &format!("{agent:?}"))
    )
}

#[test]
fn the_ecs_recipe_keeps_tasks_to_their_credentials_and_the_agent_to_itself() {
    if !imds_guard_e2e::privileged_or_skip(
        "the_ecs_recipe_keeps_tasks_to_their_credentials_and_the_agent_to_itself",
    ) {
        return;
    }
    let mut sb = Sandbox::new();
    let agent_cgroup = sb.cgroup.child("ecs-agent");
    let task_cgroup = sb.cgroup.child("task");
    // Both on the host's network, each in a user namespace of its own (a
    // container), root inside: the ECS agent and a task in host mode. A
    // bridged task, in a network namespace of its own, cannot reach the
    // host's loopback at all; the first test has it at the endpoints.
    let userns = UserNamespace::nested(&sb.cgroup, &[(0, 0)]);
    let ns = userns
        .last()
        .unwrap_or_else(|| panic!("no user namespace"))
        .path();
    let host_net = sb.netns_path().to_owned();
    let container = |cgroup: &std::path::Path| {
        Probe::at(&host_net, cgroup)
            .uid(0)
            .gid(0)
            .userns(ns.clone())
    };
    let (agent, task) = (
        container(agent_cgroup.path()),
        container(task_cgroup.path()),
    );
    let (root, nobody) = (sb.probe_as(0, 0), sb.probe_as(NOBODY, NOBODY));
    let _services =
        [ECS_CREDENTIALS, ECS_INTROSPECTION].map(|e| TcpService::start(sb.netns_path(), e));
    let imds = SocketAddr::new(imds_v4(), IMDS_PORT);
    let all = [imds, ECS_INTROSPECTION, ECS_CREDENTIALS];
    for p in [&agent, &task, &root, &nobody] {
        for to in all {
            connect(p, to).assert_ok();
        }
    }
    sb.policy(&ecs_recipe(&cgroup_path(&agent_cgroup)));
    sb.guard(&[]);
    // The task: its credentials, neither the metadata service nor the
    // introspection API.
    connect(&task, ECS_CREDENTIALS).assert_ok();
    for to in [imds, ECS_INTROSPECTION] {
        let r = connect(&task, to);
        refused(&r, &format!("the task at {to}"));
        let rec = record_for(&sb, "deny", &r);
        assert_eq!(str_field(&rec, "place"), "container", "{rec}");
    }
    // The agent's container and root on the host: everything.
    for p in [&agent, &root] {
        for to in all {
            connect(p, to).assert_ok();
        }
    }
    // Anyone else on the host: nothing, the credentials endpoint included.
    for to in all {
        refused(
            &connect(&nobody, to),
            &format!("nobody on the host at {to}"),
        );
    }
}
