//! Atmosphere's Matter side, on `rs-matter`: a controller that commissions devices over PASE,
//! reaches them by CASE and switches them (`controller`), and a virtual OnOff light for the demo
//! and the tests (`device`). rs-matter's futures are not `Send`: each runs on a thread of its own
//! with a single-threaded executor, and the rest of the node talks to it over channels.

pub mod controller;
pub mod device;
pub mod state;

pub use controller::{Action, Controller, Device, MatterError};
pub use device::{LightConfig, run_light};
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

/// Reads a manual pairing code (`3497-011-2332`, dashes optional) into its passcode; the check
/// digit is verified.
pub fn passcode_from_pairing_code(code: &str) -> Result<u32, MatterError> {
    let payload =
        rs_matter::pairing::qr::QrPayload::parse_pairing_code(code.trim()).map_err(|e| {
            MatterError::BadCode(format!(
                "{code:?} is not a Matter manual pairing code ({e})"
            ))
        })?;
    Ok(payload.passcode())
}
