//! The real membership core at scale, in a deterministic simulation with loss and latency.

use std::time::Duration;

use atmosphere_mesh::sim::{Sim, SimConfig, epidemic_rounds};
use atmosphere_proto::record::NameKey;

/// A LAN that is not kind: 2% of messages lost, 5–25 ms one way.
fn lossy(n: usize) -> SimConfig {
    let mut config = SimConfig::new(n);
    config.loss = 0.02;
    config.latency = Duration::from_millis(5);
    config.jitter = Duration::from_millis(20);
    config
}

#[test]
fn three_nodes_converge_within_three_rounds() {
    let mut sim = Sim::new(SimConfig::new(3));
    let rounds = sim.run_until_converged(20).expect("converges");
    assert!(rounds <= 3, "took {rounds} rounds");
}

#[test]
fn an_update_spreads_in_logarithmic_rounds_at_50_and_500_nodes_with_loss_and_latency() {
    for n in [50, 500] {
        let mut sim = Sim::new(lossy(n));
        let cold = sim.run_until_converged(200).expect("cold start converges");
        sim.nodes[n / 3].set_local::<NameKey>(&"renamed".into());
        let update = sim.run_until_converged(100).expect("update converges");
        // Push–pull with fanout 3 should do no worse than Pittel's push estimate (≈ 7.0 rounds
        // at 50 nodes, 9.5 at 500), with a round's slack for the loss and the phases.
        let theory = epidemic_rounds(n, sim.config().membership.fanout);
        assert!(
            update as f64 <= theory.ceil() + 1.0,
            "{n} nodes: the update took {update} rounds, theory {theory:.1}"
        );
        // A cold start is n joins from one seed: bounded by a few epidemics.
        assert!(
            cold as f64 <= 4.0 * theory,
            "{n} nodes: the cold start took {cold} rounds, theory {theory:.1}"
        );
        assert!(sim.messages_lost > 0, "the loss was not applied");
    }
}

#[test]
fn a_dead_node_is_detected_by_all_and_healthy_ones_are_never_suspected() {
    let mut sim = Sim::new(lossy(50));
    sim.run_until_converged(100).expect("converges");
    // Ten simulated minutes of a healthy mesh with loss and jitter: no false "down".
    for _ in 0..1200 {
        sim.step();
    }
    assert_eq!(
        sim.false_down_events, 0,
        "healthy nodes judged down over 10 simulated minutes"
    );
    let detected = sim
        .time_to_detect(7, 120)
        .expect("detected by all within 60 simulated seconds");
    // The goal is < 5 s.
    assert!(
        detected <= Duration::from_secs(5),
        "detected by all after {detected:?}"
    );
}

#[test]
fn heavy_loss_slows_convergence_but_does_not_stop_it() {
    let mut config = lossy(100);
    config.loss = 0.2;
    let mut sim = Sim::new(config);
    sim.run_until_converged(300)
        .expect("converges with 20% loss");
    sim.nodes[10].set_local::<NameKey>(&"renamed".into());
    let update = sim.run_until_converged(100).expect("update converges");
    let theory = epidemic_rounds(100, 3);
    assert!(
        (update as f64) <= 2.0 * theory,
        "update took {update} rounds with 20% loss, theory {theory:.1}"
    );
}
