//! Matter discovery by mDNS (zeroconf) between two network namespaces the test makes, joined by
//! a veth pair: the bridge finds the project's virtual light answering `_matterc._udp` and
//! commissions it from its pairing code alone; a code no device has fails with the reason.
//!
//! Kept in its own module, which runs last: a later test that restarts a node failed to see it
//! alive again after this one ran (under investigation; see the closing note of that session).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::kit::{self, BIN};
use crate::matter::virtual_device_with;

/// A network namespace held open by a `sleep` for as long as the value lives.
struct Netns {
    holder: tokio::process::Child,
}

impl Netns {
    /// Returns once the holder is inside its new namespace (it says so on stdout).
    async fn new() -> Self {
        let mut holder = tokio::process::Command::new("unshare")
            .args(["--net", "sh", "-c", "echo inside && exec sleep 3600"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("unshare (util-linux) is needed to make a network namespace");
        let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
        let said = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        assert!(
            matches!(&said, Ok(Ok(Some(line))) if line == "inside"),
            "unshare --net did not make a network namespace (needs root or CAP_SYS_ADMIN): {said:?}"
        );
        Self { holder }
    }

    fn pid(&self) -> u32 {
        self.holder.id().unwrap()
    }

    /// `nsenter` into this namespace, to put in front of a command.
    fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid().to_string(), "-n"]
            .map(String::from)
            .to_vec()
    }

    /// Runs a shell script inside; the test fails with its output if the script does.
    fn sh(&self, script: &str) {
        let output = std::process::Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "sh", "-ec", script])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "this test makes two network namespaces joined by a veth pair (it needs root or \
             CAP_NET_ADMIN); `{script}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The CLI inside a namespace.
fn cli_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &ns.pid().to_string(), "-n", BIN])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_discovers_a_light_by_mdns_and_commissions_it_from_its_code_alone() {
    // Two namespaces — the light's and the bridge's — joined by a veth pair: multicast works
    // there as on a home LAN, and nothing leaves the test.
    let dir = tempfile::tempdir().unwrap();
    let (home, bridge_ns) = (Netns::new().await, Netns::new().await);
    let status = std::process::Command::new("ip")
        .args(["link", "add", "mdv0", "netns", &home.pid().to_string()])
        .args(["type", "veth", "peer", "name", "mdv1", "netns"])
        .arg(bridge_ns.pid().to_string())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "cannot make a veth pair between the test's namespaces (needs root or CAP_NET_ADMIN): {}",
        String::from_utf8_lossy(&status.stderr)
    );
    for (ns, link, v4, v6) in [
        (&home, "mdv0", "10.77.0.1/24", "fd77::1/64"),
        (&bridge_ns, "mdv1", "10.77.0.2/24", "fd77::2/64"),
    ] {
        ns.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
             net.ipv6.conf.{link}.accept_dad=0
             ip link set lo up
             ip addr add {v4} dev {link}
             ip addr add {v6} dev {link} nodad
             ip link set {link} up"
        ));
    }

    // The kernel reports a link's operational state a moment after it comes up; the devices
    // pick interfaces that are operational.
    for (ns, link) in [(&home, "mdv0"), (&bridge_ns, "mdv1")] {
        ns.sh(&format!(
            "for i in $(seq 100); do ip -o link show {link} | grep -q 'state UP' && exit 0; \
             sleep 0.1; done; echo '{link} never came up' >&2; exit 1"
        ));
    }
    let enter = home.enter();
    let mut light = virtual_device_with(
        &dir.path().join("light"),
        5540,
        Some(&enter),
        &["--mdns", "mdv0"],
    )
    .await;
    assert_eq!(light.ready["mdns"], "mdv0", "{}", light.ready);
    let code = light.ready["pairing_code"].as_str().unwrap().to_owned();

    let mut args = kit::loopback_args(&kit::unique_mesh("mdns"), "off", &[], &[]);
    args.push("--matter".into());
    let bridge = kit::start_with(
        "bridge",
        &dir.path().join("bridge"),
        &args,
        Some(&bridge_ns.enter()),
    )
    .await;
    let api = bridge.api();

    // Discovery: the light answers `_matterc._udp` from the other namespace.
    let out = cli_in(&bridge_ns, &["--api", &api, "--json", "matter", "discover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let address = found[0]["address"].as_str().unwrap();
    assert!(
        address.contains("10.77.0.1") || address.contains("fd77::1") || address.contains("fe80"),
        "{address}"
    );

    // Commissioning with the code alone: the bridge finds the device by its discriminator.
    let started = std::time::Instant::now();
    let out = cli_in(
        &bridge_ns,
        &[
            "--api",
            &api,
            "--json",
            "matter",
            "commission",
            &code,
            "--name",
            "hall lamp",
            "--room",
            "hall",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("discover + commission took {:?}", started.elapsed());
    let device: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(device["state"]["on"], false, "{device}");
    let out = cli_in(
        &bridge_ns,
        &["--api", &api, "matter", "set", "hall lamp", "on"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(light.next_change().await, "the light itself reports ON");

    // A code no device here has: a clear error after the discovery window.
    let other = atmosphere_matter::pairing_code(20_202_021, 1000);
    let out = cli_in(
        &bridge_ns,
        &[
            "--api",
            &api,
            "matter",
            "commission",
            &other,
            "--name",
            "ghost",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no commissionable Matter device"), "{err}");
    assert!(err.contains("mdv1"), "{err}");
}
