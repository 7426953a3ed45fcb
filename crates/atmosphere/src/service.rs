//! `atmosphere service install`: a systemd unit that runs `atmosphere serve` at boot and restarts
//! it when it fails; `service unit` prints the same unit without writing anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit file (system-wide by default, or for this user with --user) and say how
    /// to start it.
    Install {
        #[command(flatten)]
        unit: UnitArgs,
        /// A user unit (~/.config/systemd/user) instead of a system one (/etc/systemd/system).
        #[arg(long)]
        user: bool,
        /// Write the unit into this directory instead.
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
        /// Replace an existing unit that differs.
        #[arg(long)]
        force: bool,
    },
    /// Print the unit file.
    Unit {
        #[command(flatten)]
        unit: UnitArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct UnitArgs {
    /// The node's config file (see `atmosphere config example`).
    #[arg(long, short)]
    config: PathBuf,
    /// The unit's name (NAME.service).
    #[arg(long, default_value = "atmosphere")]
    name: String,
    /// The account the system unit runs as (ignored for --user units).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
}

/// The unit text for `exe serve --config config`.
pub fn unit(exe: &Path, args: &UnitArgs, user: bool) -> String {
    let mut text = String::from(
        "# Written by `atmosphere service install`.\n\
         [Unit]\n\
         Description=Atmosphere mesh node\n\
         Wants=network-online.target\n\
         After=network-online.target\n\n\
         [Service]\n\
         Type=simple\n",
    );
    if let (Some(account), false) = (&args.run_as, user) {
        text += &format!("User={account}\n");
    }
    text += &format!(
        "ExecStart={} serve --config {}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # A clean stop announces the leave to the mesh.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=15\n\
         Environment=ATMOSPHERE_LOG=info\n\n\
         [Install]\n\
         WantedBy={}\n",
        quote(&exe.display().to_string()),
        quote(&args.config.display().to_string()),
        if user {
            "default.target"
        } else {
            "multi-user.target"
        }
    );
    text
}

/// systemd's quoting for an ExecStart word.
fn quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        word.to_owned()
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

pub fn run(command: ServiceCommand, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the atmosphere binary")?;
    match command {
        ServiceCommand::Unit { unit: args } => {
            print!("{}", unit(&exe, &args, false));
            Ok(())
        }
        ServiceCommand::Install {
            unit: args,
            user,
            unit_dir,
            force,
        } => {
            let config = std::fs::canonicalize(&args.config).with_context(|| {
                format!(
                    "cannot read the config {} (write one with `atmosphere config example > FILE`)",
                    args.config.display()
                )
            })?;
            let args = UnitArgs { config, ..args };
            let dir = match unit_dir {
                Some(dir) => dir,
                None if user => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .context("HOME is not set")?
                    .join(".config/systemd/user"),
                None => PathBuf::from("/etc/systemd/system"),
            };
            let text = unit(&exe, &args, user);
            let path = dir.join(format!("{}.service", args.name));
            if let Ok(existing) = std::fs::read_to_string(&path)
                && existing != text
                && !force
            {
                bail!(
                    "{} exists and differs; pass --force to replace it",
                    path.display()
                );
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(&path, &text).with_context(|| {
                format!(
                    "cannot write {} (a system unit needs root: sudo, or --user)",
                    path.display()
                )
            })?;
            let scope = if user { " --user" } else { "" };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"unit": path, "start": format!("systemctl{scope} daemon-reload && systemctl{scope} enable --now {}", args.name)})
                );
            } else {
                println!(
                    "Wrote {}.\nStart it now and at every boot:\n  systemctl{scope} daemon-reload\n  systemctl{scope} enable --now {}\nIts log: journalctl{scope} -u {} -f",
                    path.display(),
                    args.name,
                    args.name
                );
            }
            Ok(())
        }
    }
}
