//! Load on real processes: a thousand intents and tool calls at once over three nodes, every one
//! answered once, nobody judged down. Latency and throughput are printed (the `load` bench
//! measures them, and memory over a soak).

use std::time::Duration;

use crate::kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_intents_and_tool_calls_over_three_nodes_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("load");
    let nodes = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    let apis: Vec<String> = nodes.iter().map(Proc::api).collect();
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let ids: Vec<_> = nodes.iter().map(Proc::id).collect();
    // Every node learns system:health from every other before the wave.
    for api in &apis {
        eventually(
            Duration::from_secs(30),
            "system:health offered by all three",
            || async {
                let tool = get_json(&format!("http://{api}/v1/tools/system:health")).await?;
                (tool["providers"].as_array()?.len() == 3).then_some(())
            },
        )
        .await;
    }
    // A small first wave builds each node's router (it embeds the descriptors once).
    let warm = load_wave(&apis, &names, 6).await;
    assert!(warm.failures.is_empty(), "{:?}", warm.failures);

    let wave_started = std::time::Instant::now();
    let wave = load_wave(&apis, &names, 1000).await;
    eprintln!(
        "1000 concurrent over 3 nodes: {} answered in {:?} ({:.0}/s), p50 {:.0} ms, p99 {:.0} ms",
        wave.answered,
        wave.elapsed,
        wave.per_second(),
        wave.percentile(0.5),
        wave.percentile(0.99)
    );
    assert!(
        wave.failures.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        wave.failures.len(),
        &wave.failures[..wave.failures.len().min(5)]
    );
    assert_eq!((wave.sent, wave.answered), (1000, 1000));
    // Under the wave, failure detection held: every node sees every node alive, and has since
    // before the wave began (no flap down and back).
    all_alive(&apis, &ids, Duration::from_secs(10)).await;
    for api in &apis {
        let since = wave_started.elapsed().as_millis() as u64;
        let view = status(api).await.unwrap();
        for node in view.nodes.iter().filter(|n| !n.is_self) {
            assert!(
                node.status_age_ms + 200 >= since,
                "{api} changed its verdict on {} {} ms ago, during the wave",
                node.name,
                node.status_age_ms
            );
        }
    }
}
