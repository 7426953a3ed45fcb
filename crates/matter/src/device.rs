//! The project's virtual Matter devices, built with rs-matter: real Matter devices (PASE, CASE,
//! the Interaction Model over UDP, mDNS announcements where an interface allows) whose hardware is
//! a value in memory. `light` is an OnOff light; `sensor` a temperature sensor. Used by the demo
//! (`atmosphere matter virtual-device --kind light`) and the tests. Local changes (a wall switch,
//! the room warming up) come in over a channel and are reported like the remote ones.

use core::cell::Cell;
use core::pin::pin;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::path::PathBuf;

use embassy_futures::select::{select, select4};
use rs_matter::crypto::{Crypto, default_crypto};
use rs_matter::dm::clusters::app::on_off::{
    self, EffectVariantEnum, OnOffHandler, OnOffHooks, StartUpOnOffEnum, test::TestOnOffDeviceLogic,
};
use rs_matter::dm::clusters::decl::temperature_measurement as thermo;
use rs_matter::dm::clusters::desc::{self, ClusterHandler as _};
use rs_matter::dm::devices::DEV_TYPE_ON_OFF_LIGHT;
use rs_matter::dm::devices::test::{DAC_PRIVKEY, TEST_DEV_ATT, TEST_DEV_DET};
use rs_matter::dm::networks::SysNetifs;
use rs_matter::dm::networks::eth::EthNetwork;
use rs_matter::dm::{
    Async, AttrChangeNotifier, Cluster, Dataver, DeviceType, Endpoint, Node, ReadContext, endpoints,
};
use rs_matter::error::Error;
use rs_matter::im::{EthInteractionModelState, InteractionModel};
use rs_matter::persist::DirKvBlobStore;
use rs_matter::respond::DefaultResponder;
use rs_matter::sc::pase::{MAX_COMM_WINDOW_TIMEOUT_SECS, Spake2pVerifierPassword};
use rs_matter::tlv::Nullable;
use rs_matter::transport::exchange::MatterBuffers;
use rs_matter::utils::select::Coalesce;
use rs_matter::{BasicCommData, Matter, clusters, devices, root_endpoint, with};
use tokio::sync::mpsc;

use crate::MatterError;
use crate::mdns::Interface;

/// Which virtual device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// An OnOff light (Matter device type 0x0100).
    Light,
    /// A temperature sensor (device type 0x0302).
    TemperatureSensor,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "light" => Ok(Self::Light),
            "sensor" | "temperature" | "temperature-sensor" => Ok(Self::TemperatureSensor),
            other => Err(format!(
                "no virtual device {other:?}: the kinds are light and sensor"
            )),
        }
    }
}

/// How to run a virtual device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub kind: DeviceKind,
    /// UDP port (dual-stack `[::]`); Matter's default is 5540.
    pub port: u16,
    pub passcode: u32,
    pub discriminator: u16,
    /// Where the device keeps its fabrics (so a restart stays commissioned).
    pub state_dir: PathBuf,
    /// Announce on this interface by mDNS; `None`: reachable by address only.
    pub mdns: Option<Interface>,
    /// The sensor's first reading, in °C.
    pub celsius: f64,
}

/// A change of the device's state, local or commanded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    On(bool),
    Celsius(f64),
}

pub(crate) fn comm_data(passcode: u32, discriminator: u16) -> BasicCommData {
    let bytes = passcode.to_le_bytes();
    BasicCommData {
        password: Spake2pVerifierPassword::new_from_ref(
            rs_matter::sc::pase::Spake2pVerifierPasswordRef::new(&bytes),
        ),
        discriminator,
    }
}

/// The light's state, reported on every change.
struct Light<'c> {
    on: Cell<bool>,
    changed: &'c dyn Fn(Change),
}

impl OnOffHooks for Light<'_> {
    const CLUSTER: Cluster<'static> = <TestOnOffDeviceLogic as OnOffHooks>::CLUSTER;

    fn on_off(&self) -> bool {
        self.on.get()
    }

    fn set_on_off(&self, on: bool) {
        self.on.set(on);
        (self.changed)(Change::On(on));
    }

    fn start_up_on_off(&self) -> Nullable<StartUpOnOffEnum> {
        Nullable::none()
    }

    fn set_start_up_on_off(&self, _value: Nullable<StartUpOnOffEnum>) -> Result<(), Error> {
        Ok(())
    }

    async fn handle_off_with_effect(&self, _effect: EffectVariantEnum) {}
}

/// The sensor's reading, in hundredths of a degree (Matter's unit).
struct Thermometer {
    dataver: Dataver,
    centi: Cell<i16>,
}

impl thermo::ClusterHandler for Thermometer {
    const CLUSTER: Cluster<'static> = thermo::FULL_CLUSTER
        .with_attrs(with!(required))
        .with_cmds(with!());

    fn dataver(&self) -> u32 {
        self.dataver.get()
    }

    fn dataver_changed(&self) {
        self.dataver.changed();
    }

    fn measured_value(&self, _ctx: impl ReadContext) -> Result<Nullable<i16>, Error> {
        Ok(Nullable::some(self.centi.get()))
    }

    fn min_measured_value(&self, _ctx: impl ReadContext) -> Result<Nullable<i16>, Error> {
        Ok(Nullable::some(-4000))
    }

    fn max_measured_value(&self, _ctx: impl ReadContext) -> Result<Nullable<i16>, Error> {
        Ok(Nullable::some(12500))
    }
}

const DEV_TYPE_TEMPERATURE_SENSOR: DeviceType = DeviceType {
    dtype: 0x0302,
    drev: 2,
};

const LIGHT: Node<'static> = Node {
    endpoints: &[
        root_endpoint!(eth),
        Endpoint::new(
            1,
            devices!(DEV_TYPE_ON_OFF_LIGHT),
            clusters!(desc::DescHandler::CLUSTER, TestOnOffDeviceLogic::CLUSTER),
        ),
    ],
};

const SENSOR: Node<'static> = Node {
    endpoints: &[
        root_endpoint!(eth),
        Endpoint::new(
            1,
            devices!(DEV_TYPE_TEMPERATURE_SENSOR),
            clusters!(
                desc::DescHandler::CLUSTER,
                <Thermometer as thermo::ClusterHandler>::CLUSTER
            ),
        ),
    ],
};

/// Hundredths of a degree, clamped to the sensor's range.
fn centi(celsius: f64) -> i16 {
    (celsius * 100.0).round().clamp(-4000.0, 12500.0) as i16
}

/// Runs the device until the process ends; `changed` sees every change of its state. `ready` is
/// called once the socket is bound, with the manual pairing code (empty when already
/// commissioned). `local` brings changes made at the device itself: a wall switch (`On`),
/// the room's temperature (`Celsius`).
pub fn run_device(
    config: &DeviceConfig,
    changed: impl Fn(Change),
    ready: impl FnOnce(&str),
    local: mpsc::UnboundedReceiver<Change>,
) -> Result<(), MatterError> {
    futures_lite::future::block_on(device(config, &changed, ready, local))
        .map_err(MatterError::from)
}

async fn device(
    config: &DeviceConfig,
    changed: &dyn Fn(Change),
    ready: impl FnOnce(&str),
    mut local: mpsc::UnboundedReceiver<Change>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|_| rs_matter::error::ErrorCode::StdIoError)?;
    let comm = comm_data(config.passcode, config.discriminator);
    let code = comm.compute_pretty_pairing_code().to_string();
    let matter = Box::new(Matter::new(&TEST_DEV_DET, comm, &TEST_DEV_ATT, config.port));
    let buffers: Box<MatterBuffers> = Box::new(MatterBuffers::new());
    let state: Box<EthInteractionModelState> =
        Box::new(EthInteractionModelState::new(EthNetwork::new_default()));
    let kv = matter.kv(DirKvBlobStore::new(config.state_dir.clone()));
    matter.startup(&kv)?;
    let crypto = default_crypto(rand::rng(), DAC_PRIVKEY);
    let mut rand = crypto.rand()?;
    let on_off = OnOffHandler::new_standalone(
        Dataver::new_rand(&mut rand),
        1,
        Light {
            on: Cell::new(false),
            changed,
        },
    );
    let thermometer = Thermometer {
        dataver: Dataver::new_rand(&mut rand),
        centi: Cell::new(centi(config.celsius)),
    };
    let (node, has_light) = match config.kind {
        DeviceKind::Light => (LIGHT, true),
        DeviceKind::TemperatureSensor => (SENSOR, false),
    };
    // Both handlers are chained; the node's metadata (`LIGHT` or `SENSOR`) decides which
    // cluster exists, and requests for the other never reach its handler.
    let data_model = (
        node,
        endpoints::EthSysHandlerBuilder::new()
            .netif_diag(&SysNetifs)
            .build(rand)
            .chain(
                |e, c| e == 1 && c == desc::DescHandler::CLUSTER.id,
                Async(desc::DescHandler::new(Dataver::new_rand(&mut rand)).adapt()),
            )
            .chain(
                |e, c| e == 1 && c == TestOnOffDeviceLogic::CLUSTER.id,
                on_off::HandlerAsyncAdaptor(&on_off),
            )
            .chain(
                |e, c| e == 1 && c == thermo::FULL_CLUSTER.id,
                Async(thermo::HandlerAdaptor(&thermometer)),
            ),
    );
    let im = InteractionModel::new(&matter, &crypto, &*buffers, data_model, &kv, &*state);
    im.startup().await?;
    let responder = DefaultResponder::new(&im);
    let socket = dual_stack(config.port).map_err(|_| rs_matter::error::ErrorCode::StdIoError)?;
    let commissioned = matter.has_fabrics();
    if !commissioned {
        im.open_basic_comm_window(MAX_COMM_WINDOW_TIMEOUT_SECS)?;
    }
    ready(if commissioned { "" } else { &code });
    let mut transport = pin!(matter.run(
        &crypto,
        &socket,
        &socket,
        rs_matter::transport::network::NoNetwork
    ));
    let mut respond = pin!(responder.run::<4, 4>());
    let mut run_im = pin!(im.run());
    let mut mdns = pin!(async {
        match &config.mdns {
            Some(interface) => {
                crate::mdns::run(&matter, &crypto, interface, "atmosphere-virtual-device").await
            }
            None => core::future::pending().await,
        }
    });
    let mut local_changes = pin!(async {
        while let Some(change) = local.recv().await {
            match change {
                Change::On(on) if has_light => on_off.set_on_off(on),
                Change::Celsius(celsius) if !has_light => {
                    thermometer.centi.set(centi(celsius));
                    im.notify_attr_changed(
                        1,
                        thermo::FULL_CLUSTER.id,
                        thermo::AttributeId::MeasuredValue as _,
                    );
                    changed(Change::Celsius(f64::from(centi(celsius)) / 100.0));
                }
                _ => log::warn!("{change:?} does not apply to this device"),
            }
        }
        core::future::pending().await
    });
    select(
        select4(&mut transport, &mut respond, &mut run_im, &mut mdns).coalesce(),
        &mut local_changes,
    )
    .coalesce()
    .await
}

/// A UDP socket on `[::]:port` that takes IPv4 too.
pub(crate) fn dual_stack(port: u16) -> std::io::Result<async_io::Async<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
    async_io::Async::new_nonblocking(UdpSocket::from(socket))
}
