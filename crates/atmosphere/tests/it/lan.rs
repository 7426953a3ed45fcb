//! mDNS on a real (virtual) LAN: three network namespaces joined by a bridge, built by the test
//! and removed afterwards. Nodes announce on the LAN interface, never on loopback.

use std::process::Command;
use std::time::Duration;

use atmosphere_mesh::{MeshStatus, Status};

use crate::kit::*;

/// Node 0's API key, once it exists.
static API_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Namespaces and links made by this test; removed on drop.
struct Lan {
    hub: String,
    nodes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Lan {
    fn build(n: usize) -> Result<Self, String> {
        let tag = std::process::id() % 100_000;
        let hub = format!("atm{tag}hub");
        let mut lan = Lan {
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &hub])?;
        ip(&[
            "-n",
            &hub,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("atm{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            lan.nodes.push(ns.clone());
            let outer = format!("v{tag}n{i}");
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"])?;
            let addr = format!("10.77.0.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn netns_cli(ns: &str, args: &[&str]) -> Option<String> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, BIN]);
    if let Some(key) = API_KEY.get().filter(|_| ns.ends_with("n0")) {
        command.args(["--api", "10.77.0.1:7070", "--api-key", key]);
    }
    let output = command.args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_namespace_lan_find_each_other_by_mdns() {
    let lan = match Lan::build(3) {
        Ok(lan) => lan,
        Err(reason) => {
            // Only where the machine forbids namespaces (not root, no CAP_NET_ADMIN).
            eprintln!("SKIPPED: cannot build a namespace LAN here: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("lan");
    let mut nodes = Vec::new();
    for (i, ns) in lan.nodes.iter().enumerate() {
        let args: Vec<String> = [
            "--listen",
            &format!("10.77.0.{}:7400", i + 1),
            "--api-listen",
            // Node 0 serves its API on the LAN address: then it demands the bearer key.
            if i == 0 {
                "10.77.0.1:7070"
            } else {
                "127.0.0.1:7070"
            },
            "--discovery",
            "lan",
            "--mesh",
            &mesh,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let wrapper: Vec<String> = ["ip", "netns", "exec", ns]
            .iter()
            .map(|s| s.to_string())
            .collect();
        nodes.push(
            start_with(
                &format!("lan-{i}"),
                &dir.path().join(ns),
                &args,
                Some(&wrapper),
            )
            .await,
        );
    }
    // Node 0's API is bound beyond loopback: without its key it refuses, with it it answers.
    let key_file = dir.path().join(&lan.nodes[0]).join("api.key");
    let key = std::fs::read_to_string(&key_file).expect("api.key written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let denied = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.nodes[0],
            BIN,
            "--api",
            "10.77.0.1:7070",
            "mesh",
            "status",
        ])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("api.key"));
    API_KEY.set(key.trim().to_owned()).unwrap();
    // The first node creates the mesh; the others join with tokens it issues.
    netns_cli(&lan.nodes[0], &["mesh", "init", "--name", "lan"]).expect("mesh init");
    for (node, ns) in nodes.iter().zip(&lan.nodes).skip(1) {
        let id = node.id().to_string();
        let token = netns_cli(
            &lan.nodes[0],
            &["token", "issue", "--node-key", &id, "--name", &node.name],
        )
        .expect("token issue");
        netns_cli(ns, &["mesh", "join", token.trim()]).expect("mesh join");
    }
    let ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
    eventually(
        Duration::from_secs(30),
        "all three see each other over the LAN",
        || async {
            for ns in &lan.nodes {
                let out = netns_cli(ns, &["--json", "mesh", "status"])?;
                let status: MeshStatus = serde_json::from_str(&out).ok()?;
                if !ids
                    .iter()
                    .all(|id| status_of(&status, *id) == Some(Status::Alive))
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Addresses learned are LAN ones, not loopback.
    let status: MeshStatus =
        serde_json::from_str(&netns_cli(&lan.nodes[0], &["--json", "mesh", "status"]).unwrap())
            .unwrap();
    for node in &status.nodes {
        assert!(
            node.addrs.iter().all(|a| !a.ip().is_loopback()),
            "{:?}",
            node.addrs
        );
    }
    drop(nodes);
}
