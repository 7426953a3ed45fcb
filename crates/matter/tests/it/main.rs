//! The controller against the project's rs-matter light, as real UDP peers on loopback:
//! commissioning with the setup code, switching, reading back, a wrong code, an unknown device,
//! and a controller restart that reaches the device again by CASE without re-commissioning.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use std::sync::Arc;

use atmosphere_matter::{
    Action, Controller, LightConfig, MatterError, MemoryStore, StateStore, run_light,
};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a virtual light on its own thread; returns its address, pairing code and a receiver
/// of its on/off changes.
fn light(dir: &std::path::Path, passcode: u32) -> (SocketAddr, String, mpsc::Receiver<bool>) {
    let port = free_udp_port();
    let config = LightConfig {
        port,
        passcode,
        discriminator: 3840,
        state_dir: dir.to_owned(),
    };
    let (changes_tx, changes) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let result = run_light(
                &config,
                move |on| {
                    let _ = changes_tx.send(on);
                },
                move |code| {
                    let _ = ready_tx.send(code.to_owned());
                },
            );
            panic!("the light stopped: {result:?}");
        })
        .unwrap();
    let code = ready.recv_timeout(Duration::from_secs(30)).unwrap();
    (format!("127.0.0.1:{port}").parse().unwrap(), code, changes)
}

fn next_change(changes: &mpsc::Receiver<bool>) -> bool {
    changes
        .recv_timeout(Duration::from_secs(10))
        .expect("the light saw no change")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_commissions_switches_and_after_a_restart_still_reaches_the_light() {
    let dir = tempfile::tempdir().unwrap();
    let passcode = 20_202_021;
    let (addr, code, changes) = light(&dir.path().join("light"), passcode);
    assert_eq!(
        atmosphere_matter::passcode_from_pairing_code(&code).unwrap(),
        passcode,
        "{code}"
    );

    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let controller = Controller::start(store.clone()).unwrap();
    let device = controller
        .commission(addr, passcode, "garage light")
        .await
        .unwrap();
    assert_eq!(
        (device.name.as_str(), device.on),
        ("garage light", Some(false))
    );

    let on = controller.act("garage light", Action::On).await.unwrap();
    assert_eq!(on.on, Some(true));
    assert!(next_change(&changes), "the device itself reports ON");
    let off = controller.act("Garage Light", Action::Off).await.unwrap();
    assert_eq!(off.on, Some(false));
    assert!(!next_change(&changes));
    let toggled = controller
        .act(&device.node_id.to_string(), Action::Toggle)
        .await
        .unwrap();
    assert_eq!(toggled.on, Some(true));
    assert!(next_change(&changes));

    assert!(matches!(
        controller.act("porch light", Action::On).await,
        Err(MatterError::UnknownDevice(_))
    ));
    assert!(matches!(
        controller.commission(addr, passcode, "garage light").await,
        Err(MatterError::Duplicate(_))
    ));

    // A second light, a wrong code: refused, nothing recorded.
    let (other, _, _) = light(&dir.path().join("other"), 12_345_678);
    let err = controller
        .commission(other, 11_111_111, "porch light")
        .await
        .unwrap_err();
    assert!(matches!(err, MatterError::WrongCode(_)), "{err}");
    assert_eq!(controller.devices().await.unwrap().len(), 1);

    // The controller restarts: its fabric and devices come back, CASE is set up again.
    drop(controller);
    let controller = Controller::start(store).unwrap();
    let devices = controller.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    let read = controller.read("garage light").await.unwrap();
    assert_eq!(read.on, Some(true));
    let off = controller.act("garage light", Action::Off).await.unwrap();
    assert_eq!(off.on, Some(false));
    assert!(!next_change(&changes));
}
