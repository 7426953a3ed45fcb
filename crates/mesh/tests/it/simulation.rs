//! The real membership core at scale, in a deterministic simulation.

use atmosphere_mesh::sim::{Sim, SimConfig};
use atmosphere_proto::record::NameKey;

#[test]
fn three_nodes_converge_within_three_rounds() {
    let mut sim = Sim::new(SimConfig::new(3));
    let rounds = sim.run_until_converged(20).expect("converges");
    assert!(rounds <= 3, "took {rounds} rounds");
}

#[test]
fn five_hundred_nodes_converge_in_logarithmic_rounds() {
    let mut sim = Sim::new(SimConfig::new(500));
    let cold = sim.run_until_converged(100).expect("cold start converges");
    // Then one update spreads epidemically: O(log N) rounds.
    sim.nodes[123].set_local::<NameKey>(&"renamed".into());
    let update = sim.run_until_converged(100).expect("update converges");
    let log2 = (500f64).log2().ceil() as u64; // 9
    assert!(update <= 2 * log2, "update took {update} rounds");
    assert!(cold <= 3 * log2, "cold start took {cold} rounds");
}

#[test]
fn a_dead_node_is_detected_by_all_and_healthy_ones_are_never_suspected() {
    let mut config = SimConfig::new(50);
    config.loss = 0.01;
    let mut sim = Sim::new(config);
    sim.run_until_converged(100).expect("converges");
    // Ten simulated minutes of a healthy mesh with 1% message loss: no false "down".
    for _ in 0..1200 {
        sim.step();
        assert_eq!(sim.false_downs(), 0, "false down at round {}", sim.rounds);
    }
    let victim = sim.id(7);
    sim.kill(7);
    let mut rounds = 0;
    while sim.n_seeing_down(&victim) < sim.n_alive() {
        sim.step();
        rounds += 1;
        assert!(
            rounds < 120,
            "not detected by all within 60 simulated seconds"
        );
    }
    // 500 ms rounds: the goal is < 5 s.
    assert!(rounds <= 10, "detected by all after {rounds} rounds");
}
