//! The Matter controller: commissions devices (PASE with the setup code, then the operational
//! certificate, then CASE), keeps its fabric (root and intermediate certificates, keys, IPK) and
//! its devices across restarts, and switches them. It runs rs-matter on a thread of its own
//! (its futures are not `Send`); [`Controller`] is the handle the async node uses.
//!
//! Devices are reached at the address they were commissioned at (unicast works on loopback, where
//! multicast does not): the stack's operational-discovery requests are answered from that table.
//!
//! Each device's attributes (on/off, temperature) are kept current by a Matter subscription: the
//! device reports every change — ours, another controller's, a wall switch — as it happens, and
//! at least every `max_int` seconds; a subscription that goes quiet longer than that is set up
//! again (with back-off while the device stays away).

use core::cell::RefCell;
use core::num::NonZeroU8;
use core::pin::pin;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use embassy_futures::select::{Either, select, select3};
use rs_matter::Matter;
use rs_matter::cert::r#gen::VALID_FOREVER;
use rs_matter::cert::{MAX_CERT_TLV_AND_ASN1_LEN, MAX_CERT_TLV_LEN};
use rs_matter::crypto::{
    CanonAeadKey, CanonPkcSecretKey, Crypto, Rng as _, SecretKey as _, SigningSecretKey as _,
    default_crypto,
};
use rs_matter::dm::clusters::app::on_off::OnOffClient;
use rs_matter::dm::clusters::decl::descriptor::DescriptorClient;
use rs_matter::dm::clusters::decl::temperature_measurement::TemperatureMeasurementClient;
use rs_matter::dm::clusters::net_comm::{DummyNetworks, NetworkType};
use rs_matter::dm::devices::test::{DAC_PRIVKEY, TEST_DEV_ATT, TEST_DEV_COMM, TEST_DEV_DET};
use rs_matter::dm::networks::wireless::NoopWirelessNetCtl;
use rs_matter::dm::{EmptyHandler, Node, ReportContext, ReportDataHandler};
use rs_matter::error::{Error, ErrorCode};
use rs_matter::fabric::FabricPersist;
use rs_matter::im::client::{ImClient, SubscribeOutcome, TxOutcome};
use rs_matter::im::{
    AttrPath, AttrResp, GenericPath, IMStatusCode, InteractionModel, InteractionModelState,
    ReportDataResp,
};
use rs_matter::onboard::cac::{IcacGenerator, RcacGenerator};
use rs_matter::onboard::noc::NocGenerator;
use rs_matter::onboard::{CommissionOptions, Commissioner};
use rs_matter::respond::Responder;
use rs_matter::tlv::{FromTLV, Nullable};
use rs_matter::transport::exchange::Exchange;
use rs_matter::transport::exchange::MatterBuffers;
use rs_matter::transport::network::mdns::{DottedName, MdnsRemoteService};
use rs_matter::transport::network::{Address, MatterRemoteService, NoNetwork};
use rs_matter::utils::select::Coalesce;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::state::{Blobs, StateStore};

/// Why a Matter operation failed. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatterError {
    #[error("{0}")]
    BadCode(String),
    #[error(
        "the device at {0} refused the setup code: check the passcode or pairing code it printed"
    )]
    WrongCode(SocketAddr),
    #[error(
        "{what}: the device did not answer (gave up after {secs} s); is it running and reachable?"
    )]
    Timeout { what: String, secs: u64 },
    #[error("no Matter device called {0:?}; see `atmosphere matter list`")]
    UnknownDevice(String),
    #[error("a device called {0:?} is already commissioned; pick another name")]
    Duplicate(String),
    #[error("{what}: {detail}")]
    Stack { what: String, detail: String },
    #[error("the Matter controller has stopped: {0}")]
    Stopped(String),
    #[error("controller state ({key}): {detail}")]
    State { key: String, detail: String },
    #[error("{device} is a {kind}: it cannot {action}")]
    Unsupported {
        device: String,
        kind: String,
        action: String,
    },
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error(
        "no commissionable Matter device{which} answered on {interface} within {secs} s: is it \
         powered and in pairing mode? Or give its address (--address IP:PORT)"
    )]
    NotFound {
        which: String,
        interface: String,
        secs: u64,
    },
}

impl From<Error> for MatterError {
    fn from(error: Error) -> Self {
        Self::Stack {
            what: "Matter".into(),
            detail: format!("{error}"),
        }
    }
}

/// What to do to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    On,
    Off,
    Toggle,
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text
            .trim()
            .to_ascii_lowercase()
            .replace(['-', ' '], "_")
            .as_str()
        {
            "on" | "turn_on" | "switch_on" => Ok(Self::On),
            "off" | "turn_off" | "switch_off" => Ok(Self::Off),
            "toggle" => Ok(Self::Toggle),
            other => Err(format!(
                "unknown action {other:?}: an OnOff device does on, off or toggle"
            )),
        }
    }
}

/// What a setup code says: the passcode, and (for a pairing code) the short discriminator that
/// picks the device out by mDNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub passcode: u32,
    pub short_discriminator: Option<u8>,
}

impl Setup {
    /// Reads a manual pairing code (`3497-011-2332`, dashes optional; the check digit is
    /// verified) or a bare setup passcode (up to 8 digits).
    pub fn parse(code: &str) -> Result<Self, MatterError> {
        let code = code.trim();
        if !code.is_empty() && code.len() <= 8 && code.chars().all(|c| c.is_ascii_digit()) {
            let passcode = code
                .parse()
                .map_err(|_| MatterError::BadCode(format!("{code:?} is not a setup passcode")))?;
            return Ok(Self {
                passcode,
                short_discriminator: None,
            });
        }
        let payload = rs_matter::pairing::qr::QrPayload::parse_pairing_code(code).map_err(|e| {
            MatterError::BadCode(format!(
                "{code:?} is neither a Matter manual pairing code nor a setup passcode ({e})"
            ))
        })?;
        Ok(Self {
            passcode: payload.passcode(),
            short_discriminator: Some(payload.short_discriminator()),
        })
    }
}

/// A device answering mDNS as commissionable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commissionable {
    /// Where it takes PASE.
    pub address: SocketAddr,
    /// Its commissionable instance name (random, 64 bits, hex).
    pub instance: String,
}

/// Matter cluster ids the bridge understands.
pub mod cluster {
    pub const ON_OFF: u32 = 0x0006;
    pub const LEVEL_CONTROL: u32 = 0x0008;
    pub const TEMPERATURE_MEASUREMENT: u32 = 0x0402;
    pub const OCCUPANCY_SENSING: u32 = 0x0406;
}

/// A commissioned device as the controller keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    /// The room it is in, if it was given ("garage"): requests may name the room instead.
    #[serde(default)]
    pub room: Option<String>,
    pub node_id: u64,
    /// Where it answered at commissioning (and is reached again).
    pub addr: SocketAddr,
    /// The server clusters of its endpoint 1, read from its Descriptor at commissioning.
    #[serde(default = "on_off_only")]
    pub clusters: Vec<u32>,
    /// Its on/off state as last read or set, if known.
    #[serde(default)]
    pub on: Option<bool>,
    /// Its temperature reading in °C, for a sensor.
    #[serde(default)]
    pub celsius: Option<f64>,
}

fn on_off_only() -> Vec<u32> {
    vec![cluster::ON_OFF]
}

impl Device {
    pub fn has(&self, cluster: u32) -> bool {
        self.clusters.contains(&cluster)
    }

    /// What it is, from its clusters: "light", "temperature sensor", …
    pub fn kind(&self) -> &'static str {
        if self.has(cluster::ON_OFF) && self.has(cluster::LEVEL_CONTROL) {
            "dimmable light"
        } else if self.has(cluster::ON_OFF) {
            "light"
        } else if self.has(cluster::TEMPERATURE_MEASUREMENT) {
            "temperature sensor"
        } else if self.has(cluster::OCCUPANCY_SENSING) {
            "occupancy sensor"
        } else {
            "device"
        }
    }
}

/// The controller's own records (the fabric itself lives in rs-matter's key-value store).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Book {
    /// Intermediate CA private key, hex: signs new devices' certificates.
    icac_key: String,
    next_node_id: u64,
    devices: Vec<Device>,
    /// The device being commissioned: its address is resolved from here for the CASE step, but
    /// it is not listed, switched or subscribed to until it is done (what it is — its clusters —
    /// is read last; a subscription set up before that watched nothing for a minute).
    #[serde(skip)]
    commissioning: Option<Device>,
}

const FABRIC_ID: u64 = 0xA7_0000_0001;
const CONTROLLER_NODE_ID: u64 = 112_233;
const FIRST_DEVICE_NODE_ID: u64 = 0x1000;
const VENDOR_ID: u16 = 0xFFF1;
/// Each device operation's bound; commissioning takes longer (key generation, several steps).
/// A device that stops answering is given up on by MRP after about 5 s of retransmissions.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `discover` and a commissioning without an address listen for mDNS answers.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// `browse_commissionable` can exclude this many already-found devices.
const MAX_DISCOVERED: usize = 6;
const COMMISSION_TIMEOUT: Duration = Duration::from_secs(45);

const BOOK_KEY: &str = "book";

impl Book {
    fn load(store: &dyn StateStore) -> Result<Option<Self>, MatterError> {
        let state = |detail: String| MatterError::State {
            key: BOOK_KEY.into(),
            detail,
        };
        match store.load(BOOK_KEY).map_err(state)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| state(e.to_string())),
            None => Ok(None),
        }
    }

    /// Where the device with Matter node id `node_id` is reached, commissioned or being so.
    fn address_of(&self, node_id: u64) -> Option<SocketAddr> {
        self.devices
            .iter()
            .chain(self.commissioning.as_ref())
            .find(|d| d.node_id == node_id)
            .map(|d| d.addr)
    }

    /// The commissioned devices to subscribe to now: those with no subscription, whose reports
    /// stopped, or whose back-off after a failure is over. (Not one being commissioned.)
    fn due_for_subscription(
        &self,
        subscriptions: &HashMap<u64, Subscription>,
        now: Instant,
    ) -> Vec<Device> {
        self.devices
            .iter()
            .filter(|d| match subscriptions.get(&d.node_id) {
                None => true,
                Some(sub) => match sub.max_int {
                    Some(max_int) => now > sub.heard + max_int + REPORT_SLACK,
                    None => now >= sub.retry_at,
                },
            })
            .cloned()
            .collect()
    }

    fn save(&self, store: &dyn StateStore) -> Result<(), MatterError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        store
            .store(BOOK_KEY, &bytes)
            .map_err(|detail| MatterError::State {
                key: BOOK_KEY.into(),
                detail,
            })
    }
}

enum Command {
    Commission {
        setup: Setup,
        addr: Option<SocketAddr>,
        name: String,
        room: Option<String>,
        reply: oneshot::Sender<Result<Device, MatterError>>,
    },
    Discover {
        reply: oneshot::Sender<Result<Vec<Commissionable>, MatterError>>,
    },
    Act {
        device: String,
        action: Action,
        reply: oneshot::Sender<Result<Device, MatterError>>,
    },
    Read {
        device: String,
        reply: oneshot::Sender<Result<Device, MatterError>>,
    },
    Devices {
        reply: oneshot::Sender<Vec<Device>>,
    },
}

/// Handle to the controller thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Controller {
    commands: mpsc::UnboundedSender<Command>,
    changed: watch::Receiver<u64>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Controller {
    /// Starts the controller with its state in `store` (a new fabric on first use). `mdns` names
    /// the interface to discover devices on (`None`: the first that can carry mDNS, if any).
    pub fn start(store: Arc<dyn StateStore>, mdns: Option<String>) -> Result<Self, MatterError> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (changed_tx, changed) = watch::channel(0);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("matter-controller".into())
            .stack_size(16 << 20)
            .spawn(move || {
                let result =
                    futures_lite::future::block_on(run(store, mdns, rx, changed_tx, &ready_tx));
                if let Err(e) = result {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| MatterError::Stopped(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| MatterError::Stopped("the controller thread ended at start".into()))??;
        Ok(Self { commands, changed })
    }

    /// Bumped whenever a device's state changes (a report, a command, a commissioning).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MatterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .map_err(|_| MatterError::Stopped("its thread has ended".into()))?;
        rx.await
            .map_err(|_| MatterError::Stopped("it dropped the request".into()))
    }

    /// Commissions a device under `name` (in `room`): the one at `addr`, or (`None`) the one
    /// whose discriminator matches `setup`'s among those answering mDNS.
    pub async fn commission(
        &self,
        setup: Setup,
        addr: Option<SocketAddr>,
        name: &str,
        room: Option<&str>,
    ) -> Result<Device, MatterError> {
        let name = name.trim().to_owned();
        let room = room
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        self.ask(|reply| Command::Commission {
            setup,
            addr,
            name,
            room,
            reply,
        })
        .await?
    }

    /// The devices that answer mDNS as commissionable within [`DISCOVER_TIMEOUT`].
    pub async fn discover(&self) -> Result<Vec<Commissionable>, MatterError> {
        self.ask(|reply| Command::Discover { reply }).await?
    }

    /// Switches a device (by name or node id); returns it with its new state.
    pub async fn act(&self, device: &str, action: Action) -> Result<Device, MatterError> {
        let device = device.to_owned();
        self.ask(|reply| Command::Act {
            device,
            action,
            reply,
        })
        .await?
    }

    /// Reads a device's OnOff attribute.
    pub async fn read(&self, device: &str) -> Result<Device, MatterError> {
        let device = device.to_owned();
        self.ask(|reply| Command::Read { device, reply }).await?
    }

    /// The commissioned devices, with their last known state.
    pub async fn devices(&self) -> Result<Vec<Device>, MatterError> {
        self.ask(|reply| Command::Devices { reply }).await
    }
}

/// The device address as rs-matter wants it (IPv6, IPv4 mapped).
fn v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V6(v6) => v6,
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
    }
}

async fn with_timeout<T>(
    what: &str,
    limit: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, MatterError> {
    with_timeout_or(what, limit, work, |_| None).await
}

/// Like [`with_timeout`], with `special` turning some stack errors into a clearer one.
async fn with_timeout_or<T>(
    what: &str,
    limit: Duration,
    work: impl Future<Output = Result<T, Error>>,
    special: impl Fn(&Error) -> Option<MatterError>,
) -> Result<T, MatterError> {
    let started = std::time::Instant::now();
    let timer =
        embassy_time::Timer::after(embassy_time::Duration::from_millis(limit.as_millis() as u64));
    // The stack may give up before our limit (MRP stops retransmitting after ~5 s).
    let timeout = || MatterError::Timeout {
        what: what.into(),
        secs: started.elapsed().as_secs().max(1),
    };
    match select(pin!(work), timer).await {
        Either::First(Ok(value)) => Ok(value),
        Either::First(Err(e)) => Err(special(&e).unwrap_or_else(|| {
            if matches!(e.code(), ErrorCode::TxTimeout | ErrorCode::RxTimeout) {
                timeout()
            } else {
                MatterError::Stack {
                    what: what.into(),
                    detail: format!("{e}"),
                }
            }
        })),
        Either::Second(()) => Err(timeout()),
    }
}

async fn run(
    store: Arc<dyn StateStore>,
    mdns: Option<String>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    changed: watch::Sender<u64>,
    ready: &std::sync::mpsc::Sender<Result<(), MatterError>>,
) -> Result<(), MatterError> {
    let matter = Box::new(Matter::new(&TEST_DEV_DET, TEST_DEV_COMM, &TEST_DEV_ATT, 0));
    let crypto = default_crypto(rand::rng(), DAC_PRIVKEY);
    let kv = matter.kv(Blobs(store.clone()));
    matter.startup(&kv)?;
    let socket = crate::device::dual_stack(0).map_err(|e| MatterError::Stopped(e.to_string()))?;
    let (fab_idx, book) = match Book::load(&*store)? {
        Some(book) => {
            let fab_idx = matter
                .with_state(|s| s.fabrics.iter().next().map(|f| f.fab_idx()))
                .ok_or_else(|| MatterError::State {
                    key: "kv".into(),
                    detail: "the controller's fabric is missing though its devices are recorded; its state was damaged (devices must be commissioned again)".into(),
                })?;
            (fab_idx, book)
        }
        None => {
            let (fab_idx, icac_key) = new_fabric(&matter, &crypto)?;
            matter.with_state(|s| -> Result<(), Error> {
                FabricPersist::new(&kv).store(s.fabrics.fabric(fab_idx)?)
            })?;
            let book = Book {
                icac_key,
                next_node_id: FIRST_DEVICE_NODE_ID,
                devices: Vec::new(),
                commissioning: None,
            };
            book.save(&*store)?;
            (fab_idx, book)
        }
    };
    let book = RefCell::new(book);
    let subscriptions = RefCell::new(HashMap::new());
    let ctx = Ctx {
        matter: &matter,
        crypto: &crypto,
        fab_idx,
        book: &book,
        store: &*store,
        mdns: mdns.as_deref(),
        subscriptions: &subscriptions,
        changed: &changed,
    };
    // The controller's own Interaction Model serves no clusters: it takes the devices' reports.
    let buffers: Box<MatterBuffers> = Box::new(MatterBuffers::new());
    let im_state = Box::new(InteractionModelState::<DummyNetworks>::new(DummyNetworks));
    let reports = Reports { ctx: &ctx };
    let im = InteractionModel::new_with_reports(
        &matter,
        &crypto,
        &*buffers,
        (Node::new(&[]), EmptyHandler),
        &kv,
        NoopWirelessNetCtl::new(NetworkType::Ethernet),
        &reports,
        &*im_state,
    );
    let responder = Responder::new_default(&im);
    let _ = ready.send(Ok(()));

    let mut transport = pin!(matter.run(&crypto, &socket, &socket, NoNetwork));
    let mut resolver = pin!(resolve_from_book(&matter, &book));
    let mut respond = pin!(responder.run::<4>());
    let mut keeper = pin!(ctx.keep_subscribed());
    let mut serve = pin!(async {
        while let Some(command) = commands.recv().await {
            ctx.handle(command).await;
        }
        Ok::<(), Error>(())
    });
    select3(
        select(&mut transport, &mut resolver).coalesce(),
        select(&mut respond, &mut keeper).coalesce(),
        &mut serve,
    )
    .coalesce()
    .await
    .map_err(MatterError::from)
}

/// A value a device reported.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    On(bool),
    Celsius(Option<f64>),
}

/// The readings in a report (OnOff and MeasuredValue of endpoint 1; the rest is ignored).
fn readings(report: &ReportDataResp<'_>) -> Vec<Reading> {
    let mut out = Vec::new();
    let Some(reports) = &report.attr_reports else {
        return out;
    };
    for resp in reports.iter().flatten() {
        let AttrResp::Data(data) = resp else { continue };
        if data.path.endpoint != Some(1) || data.path.attr != Some(0) {
            continue;
        }
        match data.path.cluster {
            Some(cluster::ON_OFF) => {
                if let Ok(on) = bool::from_tlv(&data.data) {
                    out.push(Reading::On(on));
                }
            }
            Some(cluster::TEMPERATURE_MEASUREMENT) => {
                if let Ok(centi) = Nullable::<i16>::from_tlv(&data.data) {
                    out.push(Reading::Celsius(
                        centi.into_option().map(|c| f64::from(c) / 100.0),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// A device's subscription as the controller tracks it.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    /// `None` while there is none (never set up, or lost).
    max_int: Option<Duration>,
    /// The last report, keep-alive or set-up.
    heard: Instant,
    /// When to try again after a failure, and the back-off that got there.
    retry_at: Instant,
    backoff: Duration,
}

/// How often the keeper looks for subscriptions to set up; how long it waits for a device that
/// failed, at first and at most.
const KEEPER_TICK: Duration = Duration::from_millis(500);
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A report may arrive this late after `max_int` before the subscription counts as lost.
const REPORT_SLACK: Duration = Duration::from_secs(10);
/// The longest `max_int` we accept from a device (it may pick more than we ask for, up to this).
const MAX_INT_CEILING: u16 = 60;

/// Takes the devices' reports into the book.
struct Reports<'c, 'a, C> {
    ctx: &'c Ctx<'a, C>,
}

impl<C: Crypto> ReportDataHandler for Reports<'_, '_, C> {
    async fn handle_report(
        &self,
        ctx: impl ReportContext,
        report: &ReportDataResp<'_>,
    ) -> Result<(), IMStatusCode> {
        let node_id = ctx.subscription().peer_node_id;
        if let Some(sub) = self.ctx.subscriptions.borrow_mut().get_mut(&node_id) {
            sub.heard = Instant::now();
        }
        self.ctx.apply(node_id, &readings(report));
        Ok(())
    }
}

/// A root and an intermediate CA, the controller's own operational certificate and an IPK,
/// installed as the controller's fabric. Returns the fabric index and the intermediate key (hex).
fn new_fabric<C: Crypto>(matter: &Matter<'_>, crypto: &C) -> Result<(NonZeroU8, String), Error> {
    let mut rcac_buf = [0u8; MAX_CERT_TLV_AND_ASN1_LEN];
    let mut rcac_gen = RcacGenerator::new(&mut rcac_buf);
    let (rcac_key, rcac) = rcac_gen.generate(crypto, FABRIC_ID, VALID_FOREVER)?;
    let mut icac_buf = [0u8; MAX_CERT_TLV_AND_ASN1_LEN];
    let mut icac_gen = IcacGenerator::new(&mut icac_buf);
    let (icac_key, icac) = icac_gen.generate(crypto, rcac_key.reference(), rcac, VALID_FOREVER)?;
    drop(rcac_key); // only needed to mint another intermediate: never kept

    let own_key = crypto.generate_secret_key()?;
    let mut csr_buf = [0u8; 256];
    let csr = own_key.csr(&mut csr_buf)?;
    let mut own_key_canon = CanonPkcSecretKey::new();
    own_key.write_canon(&mut own_key_canon)?;
    let mut noc_buf = [0u8; MAX_CERT_TLV_AND_ASN1_LEN];
    let mut nocs = NocGenerator::create(icac_key.reference(), rcac, icac, &mut noc_buf)?;
    let own_noc = nocs.generate(crypto, csr, CONTROLLER_NODE_ID, &[], VALID_FOREVER)?;
    let mut ipk = CanonAeadKey::new();
    crypto.rand()?.fill_bytes(ipk.access_mut());
    let fab_idx = matter.with_state(|state| {
        state
            .fabrics
            .add(
                crypto,
                own_key_canon.reference(),
                rcac,
                own_noc,
                icac,
                Some(ipk.reference()),
                VENDOR_ID,
                CONTROLLER_NODE_ID,
            )
            .map(|f| f.fab_idx())
    })?;
    Ok((fab_idx, data_encoding::HEXLOWER.encode(icac_key.access())))
}

fn find<'b>(book: &'b Book, device: &str) -> Option<&'b Device> {
    let wanted = device.trim();
    book.devices
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(wanted) || d.node_id.to_string() == wanted)
}

/// What every operation of the controller thread works with.
struct Ctx<'a, C> {
    matter: &'a Matter<'a>,
    crypto: &'a C,
    fab_idx: NonZeroU8,
    book: &'a RefCell<Book>,
    store: &'a dyn StateStore,
    mdns: Option<&'a str>,
    subscriptions: &'a RefCell<HashMap<u64, Subscription>>,
    changed: &'a watch::Sender<u64>,
}

impl<C: Crypto> Ctx<'_, C> {
    /// Records what a device reported; tells the node when something changed.
    fn apply(&self, node_id: u64, readings: &[Reading]) {
        let mut changed = false;
        if let Some(device) = self
            .book
            .borrow_mut()
            .devices
            .iter_mut()
            .find(|d| d.node_id == node_id)
        {
            for reading in readings {
                match *reading {
                    Reading::On(on) => {
                        changed |= device.on != Some(on);
                        device.on = Some(on);
                    }
                    Reading::Celsius(celsius) => {
                        changed |= device.celsius != celsius;
                        device.celsius = celsius;
                    }
                }
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Sets up a subscription for every device that has none (or whose reports stopped), with
    /// back-off for devices that do not answer. Runs for the controller's life.
    async fn keep_subscribed(&self) -> Result<(), Error> {
        loop {
            embassy_time::Timer::after(embassy_time::Duration::from_millis(
                KEEPER_TICK.as_millis() as u64,
            ))
            .await;
            let due = self
                .book
                .borrow()
                .due_for_subscription(&self.subscriptions.borrow(), Instant::now());
            for device in due {
                let what = format!("subscribe to {}", device.name);
                match with_timeout(&what, OP_TIMEOUT, self.subscribe(&device)).await {
                    Ok((readings, max_int)) => {
                        let now = Instant::now();
                        self.subscriptions.borrow_mut().insert(
                            device.node_id,
                            Subscription {
                                max_int: Some(max_int),
                                heard: now,
                                retry_at: now,
                                backoff: RETRY_FIRST,
                            },
                        );
                        self.apply(device.node_id, &readings);
                    }
                    Err(e) => {
                        log::debug!("{e}");
                        self.lost(device.node_id);
                    }
                }
            }
        }
    }

    /// A device stopped answering: its subscription is set up again later, backing off.
    fn lost(&self, node_id: u64) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        let now = Instant::now();
        let backoff = match subscriptions.get(&node_id) {
            Some(sub) if sub.max_int.is_none() => (sub.backoff * 2).min(RETRY_MAX),
            _ => RETRY_FIRST,
        };
        subscriptions.insert(
            node_id,
            Subscription {
                max_int: None,
                heard: now,
                retry_at: now + backoff,
                backoff,
            },
        );
    }

    /// Subscribes to the device's OnOff and MeasuredValue (those it has); returns the priming
    /// readings and the reporting interval the device committed to.
    async fn subscribe(&self, device: &Device) -> Result<(Vec<Reading>, Duration), Error> {
        let paths: Vec<AttrPath> = [cluster::ON_OFF, cluster::TEMPERATURE_MEASUREMENT]
            .into_iter()
            .filter(|c| device.has(*c))
            .map(|c| AttrPath::from_gp(&GenericPath::new(Some(1), Some(c), Some(0))))
            .collect();
        if paths.is_empty() {
            // Nothing we understand to watch: count it as watched, with a long interval.
            return Ok((Vec::new(), RETRY_MAX));
        }
        let exchange =
            Exchange::initiate(self.matter, self.crypto, self.fab_idx, device.node_id).await?;
        let mut sender = exchange.subscribe_sender().await?;
        let mut chunk = loop {
            match sender.tx().await? {
                TxOutcome::BuildRequest(builder) => {
                    // keep_subs false: the device drops our earlier subscription, if any.
                    sender = builder
                        .keep_subs(false)?
                        .min_int_floor(0)?
                        .max_int_ceil(MAX_INT_CEILING)?
                        .attr_requests_from(&paths)?
                        .fabric_filtered(false)?
                        .end()?;
                }
                TxOutcome::GotResponse(chunk) => break chunk,
            }
        };
        let mut primed = Vec::new();
        let established = loop {
            primed.extend(readings(&chunk.response()?));
            match chunk.complete().await? {
                SubscribeOutcome::NextChunk(next) => chunk = next,
                SubscribeOutcome::Established(established) => break established,
            }
        };
        Ok((
            primed,
            Duration::from_secs(u64::from(established.max_int.max(1))),
        ))
    }

    async fn handle(&self, command: Command) {
        match command {
            Command::Commission {
                setup,
                addr,
                name,
                room,
                reply,
            } => {
                let _ = reply.send(self.commission(setup, addr, name, room).await);
            }
            Command::Discover { reply } => {
                let _ = reply.send(self.discover(None).await);
            }
            Command::Act {
                device,
                action,
                reply,
            } => {
                let _ = reply.send(self.act(&device, Some(action)).await);
            }
            Command::Read { device, reply } => {
                let _ = reply.send(self.act(&device, None).await);
            }
            Command::Devices { reply } => {
                let _ = reply.send(self.book.borrow().devices.clone());
            }
        }
    }
    /// Browses for commissionable devices (those with `short_discriminator` only, if given),
    /// running the mDNS responder meanwhile.
    async fn discover(
        &self,
        short_discriminator: Option<u8>,
    ) -> Result<Vec<Commissionable>, MatterError> {
        let interface = crate::mdns::interface(self.mdns)?;
        let filter = rs_matter::transport::network::mdns::CommissionableFilter {
            short_discriminator,
            commissioning_mode_only: true,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let browse = async {
            let mut found = Vec::new();
            let mut seen: Vec<u64> = Vec::new();
            while seen.len() < MAX_DISCOVERED {
                let left = DISCOVER_TIMEOUT.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                match self
                    .matter
                    .transport()
                    .browse_commissionable(&filter, &seen, left.as_millis() as u32)
                    .await
                {
                    Ok((Address::Udp(address), instance)) => {
                        seen.push(instance);
                        found.push(Commissionable {
                            address,
                            instance: format!("{instance:016X}"),
                        });
                        // One is all a commissioning by code needs.
                        if short_discriminator.is_some() {
                            break;
                        }
                    }
                    Ok((_, instance)) => seen.push(instance),
                    Err(e) if e.code() == ErrorCode::NotFound => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        };
        let responder = crate::mdns::run(self.matter, self.crypto, &interface, "atmosphere-bridge");
        let found = match select(pin!(browse), pin!(responder)).await {
            Either::First(found) => found?,
            Either::Second(Err(e)) => {
                return Err(MatterError::Mdns(format!(
                    "on {}: {e} (is UDP port 5353 free or shared?)",
                    interface.name
                )));
            }
            Either::Second(Ok(())) => Vec::new(),
        };
        if found.is_empty() && short_discriminator.is_some() {
            return Err(MatterError::NotFound {
                which: short_discriminator
                    .map(|d| format!(" with short discriminator {d}"))
                    .unwrap_or_default(),
                interface: interface.name,
                secs: DISCOVER_TIMEOUT.as_secs(),
            });
        }
        Ok(found)
    }

    async fn commission(
        &self,
        setup: Setup,
        addr: Option<SocketAddr>,
        name: String,
        room: Option<String>,
    ) -> Result<Device, MatterError> {
        let name = name.as_str();
        if name.is_empty() {
            return Err(MatterError::BadCode(
                "a device needs a name, e.g. \"garage light\"".into(),
            ));
        }
        if find(&self.book.borrow(), name).is_some() {
            return Err(MatterError::Duplicate(name.to_owned()));
        }
        let (icac_hex, node_id) = {
            let book = self.book.borrow();
            (book.icac_key.clone(), book.next_node_id)
        };
        let mut icac_key = CanonPkcSecretKey::new();
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(icac_hex.as_bytes())
            .unwrap_or_default();
        icac_key
            .try_load_from_slice(&bytes)
            .map_err(|_| MatterError::State {
                key: BOOK_KEY.into(),
                detail: "the intermediate CA key does not load".into(),
            })?;
        let mut noc_buf = [0u8; MAX_CERT_TLV_AND_ASN1_LEN];
        let mut nocs = NocGenerator::new(
            self.matter,
            icac_key.reference(),
            self.fab_idx,
            &mut noc_buf,
        )?;
        let mut scratch = [0u8; MAX_CERT_TLV_LEN];
        let mut commissioner = Commissioner::new(
            self.matter,
            self.crypto,
            self.fab_idx,
            &mut nocs,
            &mut scratch,
        );
        let options = CommissionOptions {
            // Our virtual devices (and self.matter.js's) carry test attestation; DCL checks are not
            // implemented by rs-self.matter 0.4.1.
            allow_test_attestation: true,
            ..CommissionOptions::default()
        };
        let addr = match addr {
            Some(addr) => addr,
            None => {
                let found = self.discover(setup.short_discriminator).await?;
                found
                    .first()
                    .map(|f| f.address)
                    .ok_or(MatterError::NotFound {
                        which: String::new(),
                        interface: self.mdns.unwrap_or("the default interface").into(),
                        secs: DISCOVER_TIMEOUT.as_secs(),
                    })?
            }
        };
        let target = v6(addr);
        // The device's address is put aside first: the CASE step resolves it from there.
        let mut device = Device {
            name: name.to_owned(),
            room,
            node_id,
            addr,
            clusters: Vec::new(),
            on: None,
            celsius: None,
        };
        let phase1 = commissioner.commission(
            Address::Udp(SocketAddr::V6(target)),
            setup.passcode,
            &options,
            node_id,
            VALID_FOREVER,
        );
        let result = with_timeout_or("commissioning", COMMISSION_TIMEOUT, phase1, |e| {
            // PASE ends with `Invalid` when the passcode does not match the device's verifier.
            (e.code() == ErrorCode::Invalid).then_some(MatterError::WrongCode(addr))
        })
        .await?;
        {
            let mut book = self.book.borrow_mut();
            book.next_node_id += 1;
            book.commissioning = Some(device.clone());
        }
        let completed = with_timeout(
            "commissioning (CASE)",
            COMMISSION_TIMEOUT,
            commissioner.complete_via_case(&result),
        )
        .await;
        // What it is: the server clusters of its endpoint 1.
        let clusters = match completed {
            Ok(()) => {
                let read = async {
                    let exchange =
                        Exchange::initiate(self.matter, self.crypto, self.fab_idx, node_id).await?;
                    exchange
                        .descriptor()
                        .server_list_read_with(1, |list| -> Result<Vec<u32>, Error> {
                            list?.iter().collect()
                        })
                        .await?
                };
                with_timeout(&format!("read what {name} is"), OP_TIMEOUT, read).await
            }
            Err(e) => Err(e),
        };
        let clusters = match clusters {
            Ok(clusters) => clusters,
            Err(e) => {
                self.book.borrow_mut().commissioning = None;
                self.book.borrow().save(self.store)?;
                return Err(e);
            }
        };
        device.clusters = clusters;
        {
            let mut book = self.book.borrow_mut();
            book.commissioning = None;
            book.devices.push(device.clone());
        }
        self.book.borrow().save(self.store)?;
        // Read its state once, so `list` shows it at once.
        self.act(&node_id.to_string(), None).await
    }

    async fn act(&self, device: &str, action: Option<Action>) -> Result<Device, MatterError> {
        let found = find(&self.book.borrow(), device).cloned();
        let mut found = found.ok_or_else(|| MatterError::UnknownDevice(device.to_owned()))?;
        if action.is_some() && !found.has(cluster::ON_OFF) {
            return Err(MatterError::Unsupported {
                device: found.name.clone(),
                kind: found.kind().into(),
                action: "switch on or off".into(),
            });
        }
        let result = self.operate(&mut found, action).await;
        match &result {
            Ok(()) => {
                let mut readings = Vec::new();
                readings.extend(found.on.map(Reading::On));
                if found.has(cluster::TEMPERATURE_MEASUREMENT) {
                    readings.push(Reading::Celsius(found.celsius));
                }
                self.apply(found.node_id, &readings);
                // Back after an absence: subscribe again now rather than after the back-off.
                let quiet = self
                    .subscriptions
                    .borrow()
                    .get(&found.node_id)
                    .is_some_and(|s| s.max_int.is_none());
                if quiet {
                    self.subscriptions.borrow_mut().remove(&found.node_id);
                }
            }
            Err(_) => self.lost(found.node_id),
        }
        result?;
        let _ = self.book.borrow().save(self.store);
        Ok(found)
    }

    /// Sends `action` (if any) to the device and reads its state back into `found`.
    async fn operate(&self, found: &mut Device, action: Option<Action>) -> Result<(), MatterError> {
        let what = |verb: &str| format!("{verb} {}", found.name);
        if let Some(action) = action {
            let command = async {
                let exchange =
                    Exchange::initiate(self.matter, self.crypto, self.fab_idx, found.node_id)
                        .await?;
                let client = exchange.on_off();
                match action {
                    Action::On => client.on(1).await,
                    Action::Off => client.off(1).await,
                    Action::Toggle => client.toggle(1).await,
                }
            };
            with_timeout(&what("switch"), OP_TIMEOUT, command).await?;
        }
        if found.has(cluster::ON_OFF) {
            let read = async {
                let exchange =
                    Exchange::initiate(self.matter, self.crypto, self.fab_idx, found.node_id)
                        .await?;
                exchange.on_off().on_off_read(1).await
            };
            found.on = Some(with_timeout(&what("read"), OP_TIMEOUT, read).await?);
        }
        if found.has(cluster::TEMPERATURE_MEASUREMENT) {
            let read = async {
                let exchange =
                    Exchange::initiate(self.matter, self.crypto, self.fab_idx, found.node_id)
                        .await?;
                exchange
                    .temperature_measurement()
                    .measured_value_read(1)
                    .await
            };
            let centi = with_timeout(&what("read"), OP_TIMEOUT, read).await?;
            found.celsius = centi.into_option().map(|c| f64::from(c) / 100.0);
        }
        Ok(())
    }
}

/// Answers the stack's operational-discovery requests from the devices' known addresses.
async fn resolve_from_book(matter: &Matter<'_>, book: &RefCell<Book>) -> Result<(), Error> {
    loop {
        let service = matter.transport().wait_mdns_resolve_request().await;
        let MatterRemoteService::Operational { node_id, .. } = &service else {
            continue;
        };
        let Some(addr) = book.borrow().address_of(*node_id).map(v6) else {
            continue;
        };
        let mut name = heapless::String::<128>::new();
        service.instance_name(&mut name);
        matter.transport().try_deposit_mdns_resolve(
            &MdnsRemoteService {
                instance_name: DottedName(name.as_str()),
                port: Some(addr.port()),
                addrs: core::iter::once(IpAddr::V6(*addr.ip())),
                txt: None::<(&str, &str)>.into_iter(),
                // A link-local address (as mDNS often gives) is only reachable on its interface.
                scope_id: addr.scope_id(),
            },
            &[],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, node_id: u64) -> Device {
        Device {
            name: name.into(),
            room: None,
            node_id,
            addr: SocketAddr::from(([127, 0, 0, 1], 5540 + node_id as u16)),
            clusters: Vec::new(),
            on: None,
            celsius: None,
        }
    }

    #[test]
    fn a_device_being_commissioned_is_resolved_but_neither_listed_nor_subscribed_to() {
        let book = Book {
            devices: vec![device("lamp", 1)],
            commissioning: Some(device("porch", 2)),
            ..Book::default()
        };
        assert_eq!(book.address_of(2), Some(device("porch", 2).addr));
        assert_eq!(book.address_of(1), Some(device("lamp", 1).addr));
        assert_eq!(book.address_of(3), None);
        assert!(find(&book, "porch").is_none());
        let due = book.due_for_subscription(&HashMap::new(), Instant::now());
        assert_eq!(due.iter().map(|d| d.node_id).collect::<Vec<_>>(), [1]);
        // Its record on disk leaves it out too.
        let saved: Book = serde_json::from_slice(&serde_json::to_vec(&book).unwrap()).unwrap();
        assert!(saved.commissioning.is_none() && saved.devices.len() == 1);
    }

    #[test]
    fn a_subscription_is_set_up_again_when_its_reports_stop_or_its_back_off_ends() {
        let book = Book {
            devices: vec![device("a", 1), device("b", 2), device("c", 3)],
            ..Book::default()
        };
        let now = Instant::now();
        let max_int = Duration::from_secs(10);
        let subscriptions = HashMap::from([
            // Heard just now: not due.
            (
                1,
                Subscription {
                    max_int: Some(max_int),
                    heard: now,
                    retry_at: now,
                    backoff: RETRY_FIRST,
                },
            ),
            // Silent past max_int and the slack: due.
            (
                2,
                Subscription {
                    max_int: Some(max_int),
                    heard: now - max_int - REPORT_SLACK - Duration::from_secs(1),
                    retry_at: now,
                    backoff: RETRY_FIRST,
                },
            ),
            // Failed; its back-off runs until later: not due.
            (
                3,
                Subscription {
                    max_int: None,
                    heard: now,
                    retry_at: now + RETRY_FIRST,
                    backoff: RETRY_FIRST,
                },
            ),
        ]);
        let due = |at| {
            book.due_for_subscription(&subscriptions, at)
                .iter()
                .map(|d| d.node_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due(now), [2]);
        assert_eq!(due(now + RETRY_FIRST), [2, 3]);
    }
}
