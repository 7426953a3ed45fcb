//! The controller against the project's rs-matter devices, as real UDP peers on loopback:
//! commissioning with the setup code, switching, reading back, a change made at the device itself,
//! a temperature sensor in a room, a wrong code, an unknown device, an action the device cannot
//! do, and a controller restart that reaches the device again by CASE without re-commissioning.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use std::sync::Arc;

use atmosphere_matter::{
    Action, Change, Controller, DeviceConfig, DeviceKind, MatterError, MemoryStore, Setup,
    StateStore, run_device,
};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A virtual device running on its own thread.
struct Virtual {
    addr: SocketAddr,
    code: String,
    changes: mpsc::Receiver<Change>,
    /// Changes made at the device itself.
    local: tokio::sync::mpsc::UnboundedSender<Change>,
}

fn device(dir: &std::path::Path, kind: DeviceKind, passcode: u32) -> Virtual {
    let port = free_udp_port();
    let config = DeviceConfig {
        kind,
        port,
        passcode,
        discriminator: 3840,
        state_dir: dir.to_owned(),
        mdns: None,
        celsius: 21.0,
    };
    let (changes_tx, changes) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    let (local, local_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let result = run_device(
                &config,
                move |change| {
                    let _ = changes_tx.send(change);
                },
                move |code| {
                    let _ = ready_tx.send(code.to_owned());
                },
                local_rx,
            );
            panic!("the device stopped: {result:?}");
        })
        .unwrap();
    let code = ready.recv_timeout(Duration::from_secs(30)).unwrap();
    Virtual {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        code,
        changes,
        local,
    }
}

fn next_change(changes: &mpsc::Receiver<Change>) -> Change {
    changes
        .recv_timeout(Duration::from_secs(10))
        .expect("the device saw no change")
}

/// Waits (10 s at most) for the controller to report `device` in the state `wanted` describes.
async fn reported(
    controller: &Controller,
    changed: &mut tokio::sync::watch::Receiver<u64>,
    device: &str,
    wanted: impl Fn(&atmosphere_matter::Device) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let devices = controller.devices().await.unwrap();
        let found = devices.iter().find(|d| d.name == device).unwrap();
        if wanted(found) {
            return;
        }
        tokio::time::timeout_at(deadline, changed.changed())
            .await
            .unwrap_or_else(|_| panic!("no report brought {device} to the wanted state: {found:?}"))
            .unwrap();
    }
}

fn setup(passcode: u32) -> Setup {
    Setup::parse(&passcode.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_commissions_switches_and_after_a_restart_still_reaches_the_light() {
    let dir = tempfile::tempdir().unwrap();
    let passcode = 20_202_021;
    let light = device(&dir.path().join("light"), DeviceKind::Light, passcode);
    let (addr, changes) = (light.addr, &light.changes);
    let parsed = Setup::parse(&light.code).unwrap();
    assert_eq!(
        (parsed.passcode, parsed.short_discriminator),
        (passcode, Some(15)),
        "{}",
        light.code
    );

    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let controller = Controller::start(store.clone(), None).unwrap();
    let commissioned = controller
        .commission(setup(passcode), Some(addr), "garage light", None)
        .await
        .unwrap();
    assert_eq!(
        (commissioned.name.as_str(), commissioned.on),
        ("garage light", Some(false))
    );
    assert_eq!(commissioned.kind(), "light", "{:?}", commissioned.clusters);

    let on = controller.act("garage light", Action::On).await.unwrap();
    assert_eq!(on.on, Some(true));
    assert_eq!(
        next_change(changes),
        Change::On(true),
        "the device itself reports ON"
    );
    let off = controller.act("Garage Light", Action::Off).await.unwrap();
    assert_eq!(off.on, Some(false));
    assert_eq!(next_change(changes), Change::On(false));
    let toggled = controller
        .act(&commissioned.node_id.to_string(), Action::Toggle)
        .await
        .unwrap();
    assert_eq!(toggled.on, Some(true));
    assert_eq!(next_change(changes), Change::On(true));

    // Someone at the wall switch: the light reports it through the controller's subscription,
    // nobody asks.
    let mut changed = controller.changes();
    light.local.send(Change::On(false)).unwrap();
    assert_eq!(next_change(changes), Change::On(false));
    reported(&controller, &mut changed, "garage light", |d| {
        d.on == Some(false)
    })
    .await;
    controller.act("garage light", Action::On).await.unwrap();
    assert_eq!(next_change(changes), Change::On(true));

    assert!(matches!(
        controller.act("porch light", Action::On).await,
        Err(MatterError::UnknownDevice(_))
    ));
    assert!(matches!(
        controller
            .commission(setup(passcode), Some(addr), "garage light", None)
            .await,
        Err(MatterError::Duplicate(_))
    ));

    // A second light, a wrong code: refused, nothing recorded.
    let other = device(&dir.path().join("other"), DeviceKind::Light, 12_345_678);
    let err = controller
        .commission(setup(11_111_111), Some(other.addr), "porch light", None)
        .await
        .unwrap_err();
    assert!(matches!(err, MatterError::WrongCode(_)), "{err}");
    assert_eq!(controller.devices().await.unwrap().len(), 1);

    // A temperature sensor in the kitchen: read, warmed at the device, read again; it cannot
    // be switched.
    let sensor = device(
        &dir.path().join("sensor"),
        DeviceKind::TemperatureSensor,
        passcode,
    );
    let thermo = controller
        .commission(
            setup(passcode),
            Some(sensor.addr),
            "thermo",
            Some("kitchen"),
        )
        .await
        .unwrap();
    assert_eq!(thermo.kind(), "temperature sensor", "{:?}", thermo.clusters);
    assert_eq!(
        (thermo.room.as_deref(), thermo.celsius, thermo.on),
        (Some("kitchen"), Some(21.0), None)
    );
    sensor.local.send(Change::Celsius(23.46)).unwrap();
    assert_eq!(next_change(&sensor.changes), Change::Celsius(23.46));
    reported(&controller, &mut changed, "thermo", |d| {
        d.celsius == Some(23.46)
    })
    .await;
    assert_eq!(
        controller.read("thermo").await.unwrap().celsius,
        Some(23.46)
    );
    let err = controller.act("thermo", Action::On).await.unwrap_err();
    assert!(matches!(err, MatterError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("temperature sensor"), "{err}");

    // The controller restarts: its fabric and devices come back, CASE is set up again.
    drop(controller);
    let controller = Controller::start(store, None).unwrap();
    let devices = controller.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    let read = controller.read("garage light").await.unwrap();
    assert_eq!(read.on, Some(true));
    let off = controller.act("garage light", Action::Off).await.unwrap();
    assert_eq!(off.on, Some(false));
    assert_eq!(next_change(changes), Change::On(false));
    assert_eq!(
        controller.read("thermo").await.unwrap().celsius,
        Some(23.46)
    );
}
