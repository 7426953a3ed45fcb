//! A virtual Matter OnOff light, built with rs-matter: a real Matter device (PASE, CASE, the
//! Interaction Model over UDP) whose "bulb" is a boolean reported to a callback. Used by the demo
//! (`atmosphere matter virtual-device --kind light`) and the tests.

use core::cell::Cell;
use core::pin::pin;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::path::PathBuf;

use embassy_futures::select::select3;
use rs_matter::crypto::{Crypto, default_crypto};
use rs_matter::dm::clusters::app::on_off::{
    self, EffectVariantEnum, OnOffHandler, OnOffHooks, StartUpOnOffEnum, test::TestOnOffDeviceLogic,
};
use rs_matter::dm::clusters::desc::{self, ClusterHandler as _};
use rs_matter::dm::devices::DEV_TYPE_ON_OFF_LIGHT;
use rs_matter::dm::devices::test::{DAC_PRIVKEY, TEST_DEV_ATT, TEST_DEV_DET};
use rs_matter::dm::networks::SysNetifs;
use rs_matter::dm::networks::eth::EthNetwork;
use rs_matter::dm::{Async, Cluster, Dataver, Endpoint, Node, endpoints};
use rs_matter::error::Error;
use rs_matter::im::{EthInteractionModelState, InteractionModel};
use rs_matter::persist::DirKvBlobStore;
use rs_matter::respond::DefaultResponder;
use rs_matter::sc::pase::{MAX_COMM_WINDOW_TIMEOUT_SECS, Spake2pVerifierPassword};
use rs_matter::tlv::Nullable;
use rs_matter::transport::exchange::MatterBuffers;
use rs_matter::utils::select::Coalesce;
use rs_matter::{BasicCommData, Matter, clusters, devices, root_endpoint};

use crate::MatterError;

/// How to run a virtual light.
#[derive(Debug, Clone)]
pub struct LightConfig {
    /// UDP port (dual-stack `[::]`); Matter's default is 5540.
    pub port: u16,
    pub passcode: u32,
    pub discriminator: u16,
    /// Where the device keeps its fabrics (so a restart stays commissioned).
    pub state_dir: PathBuf,
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

/// The light's state, reported to a callback on every change.
struct Light<F: Fn(bool)> {
    on: Cell<bool>,
    changed: F,
}

impl<F: Fn(bool)> OnOffHooks for Light<F> {
    const CLUSTER: Cluster<'static> = <TestOnOffDeviceLogic as OnOffHooks>::CLUSTER;

    fn on_off(&self) -> bool {
        self.on.get()
    }

    fn set_on_off(&self, on: bool) {
        self.on.set(on);
        (self.changed)(on);
    }

    fn start_up_on_off(&self) -> Nullable<StartUpOnOffEnum> {
        Nullable::none()
    }

    fn set_start_up_on_off(&self, _value: Nullable<StartUpOnOffEnum>) -> Result<(), Error> {
        Ok(())
    }

    async fn handle_off_with_effect(&self, _effect: EffectVariantEnum) {}
}

const NODE: Node<'static> = Node {
    endpoints: &[
        root_endpoint!(eth),
        Endpoint::new(
            1,
            devices!(DEV_TYPE_ON_OFF_LIGHT),
            clusters!(desc::DescHandler::CLUSTER, TestOnOffDeviceLogic::CLUSTER),
        ),
    ],
};

/// Runs the light until the process ends; `changed` sees every on/off change. `ready` is called
/// once the socket is bound, with the manual pairing code (empty when already commissioned).
pub fn run_light(
    config: &LightConfig,
    changed: impl Fn(bool),
    ready: impl FnOnce(&str),
) -> Result<(), MatterError> {
    futures_lite::future::block_on(light(config, changed, ready)).map_err(MatterError::from)
}

async fn light(
    config: &LightConfig,
    changed: impl Fn(bool),
    ready: impl FnOnce(&str),
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
    let data_model = (
        NODE,
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
    select3(&mut transport, &mut respond, &mut run_im)
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
