//! The arguments of the tool subcommands (`completions`, `man`, `ping`,
//! `api`, `doctor`, `bind`/`unbind`); `crate::cli` re-exports them.

use std::path::PathBuf;

use clap::Args;

use crate::config::parse_size;
use crate::host::bdf::Bdf;

/// Arguments of `vflaunch completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. bash: `source <(vflaunch completions bash)`
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `vflaunch man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write vflaunch.1 and one page per subcommand (vflaunch-run.1, ...) into this directory
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Arguments of `vflaunch ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The API socket of the running vflaunch
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Seconds to wait for the answer
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

/// Arguments of `vflaunch api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The API socket of the running vflaunch
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// GET or PUT
    #[arg(value_parser = ["GET", "PUT"])]
    pub method: String,
    /// The endpoint under /api/v1/, e.g. vm.info or vm.create
    pub endpoint: String,
    /// JSON body (for vm.create, vm.add-device); @FILE reads it from a file
    pub body: Option<String>,
    /// Open (or create) the tap NAME and send its descriptor with the request as
    /// SCM_RIGHTS, as Kata's launcher does with vm.add-net
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Seconds to wait for the answer
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Arguments of `vflaunch doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also run every `vflaunch check` check on this device (repeatable, comma-separated)
    #[arg(long = "device", value_name = "BDF", value_delimiter = ',')]
    pub devices: Vec<Bdf>,
    /// Guest memory to check locked memory and huge pages against, same format as `run --memory`
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512M")]
    pub memory: u64,
    /// Print one JSON document instead of lines
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vflaunch bind` and `vflaunch unbind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// PCI devices, DDDD:BB:DD.F or BB:DD.F
    #[arg(required = true, value_name = "BDF")]
    pub devices: Vec<Bdf>,
}
