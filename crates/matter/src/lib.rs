//! Atmosphere's Matter side, on `rs-matter`: a controller that commissions devices over PASE,
//! reaches them by CASE and switches or reads them (`controller`), mDNS discovery (`mdns`), and
//! virtual devices — a light, a temperature sensor — for the demo and the tests (`device`).
//! rs-matter's futures are not `Send`: each runs on a thread of its own with a single-threaded
//! executor, and the rest of the node talks to it over channels.

pub mod controller;
pub mod device;
pub mod mdns;
pub mod state;

pub use controller::{Action, Commissionable, Controller, Device, MatterError, Setup};
pub use device::{Change, DeviceConfig, DeviceKind, run_device};
pub use mdns::Interface;
pub use state::{MemoryStore, StateStore};

/// The setup passcode of the virtual devices unless one is given (the value chip-tool's tests use).
pub const DEFAULT_PASSCODE: u32 = 20_202_021;
/// Their discriminator unless one is given.
pub const DEFAULT_DISCRIMINATOR: u16 = 3840;

/// The 11-digit manual pairing code for `passcode` and `discriminator`, grouped `XXXX-XXX-XXXX`.
pub fn pairing_code(passcode: u32, discriminator: u16) -> String {
    device::comm_data(passcode, discriminator)
        .compute_pretty_pairing_code()
        .to_string()
}
