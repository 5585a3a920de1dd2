//! The command line (`vflaunch run` / `vflaunch check`) and how it is merged
//! with the `--config` file and the pod's device sources into a [`VmConfig`].

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

pub use crate::cli_tools::{ApiArgs, BindArgs, CompletionsArgs, DoctorArgs, ManArgs, PingArgs};
use crate::config::{
    parse_serial, parse_size, ConfigError, FileConfig, SerialMode, VmConfig, DEFAULT_CMDLINE,
    DEFAULT_MEMORY, MAX_CPUS,
};
use crate::events::{parse_target, EventTarget};
use crate::host::backend::{BackendChoice, Preopened};
use crate::host::bdf::Bdf;
use crate::host::privileges::User;
use crate::intake::{
    devices_from_env, devices_from_network_info_file, IntakeError, NETWORK_INFO_PATH,
};
use crate::virtio::options::{
    parse_disk, parse_net, parse_vsock, DiskConfig, NetConfig, VirtioConfig, VsockConfig,
};
use std::os::fd::RawFd;

const LONG_ABOUT: &str = "\
Boot a Linux guest under KVM with PCI devices - typically SR-IOV NIC virtual
functions (VFs) bound to vfio-pci - passed through via VFIO.

Examples:
  # Developer: boot a test guest with one VF
  vflaunch run --kernel bzImage --initramfs initrd.img --memory 1G --cpus 2 \\
      --device 0000:03:02.1

  # Pod with the SR-IOV device plugin: with no --device, the VFs are taken from
  # PCIDEVICE_* / PCI_RESOURCE_* variables and /etc/podinfo/network-info
  vflaunch run --config /etc/vflaunch/vm.json

Run `vflaunch doctor` first: it checks the whole SR-IOV host setup, one line each with the
fix; `vflaunch bind BDF` moves a VF to vfio-pci; `vflaunch check` runs the pre-flight checks
for one VM.";

/// Printed after `vflaunch run --help`: the console, logging and exit codes.
const RUN_AFTER_HELP: &str = "\
The guest's serial console is this terminal (stdin/stdout) unless --serial says
otherwise; Ctrl-A x quits. Logs go to stderr: -v, -vv, or RUST_LOG=info (or debug).
SIGTERM presses the guest's ACPI power button and waits --shutdown-timeout seconds
for it to power off; a second SIGTERM, or SIGINT, stops it at once.

Exit codes:
  0    the guest powered off (also after SIGTERM), or reset through the i8042 controller
  1    the VMM failed (one line on stderr says where)
  2    bad command line or configuration
  3    a host pre-flight check failed (see `vflaunch check`)
  4    the guest rebooted, triple-faulted or panicked (panic=-1)
  128+N stopped hard by signal N (SIGINT, Ctrl-A x, a second SIGTERM, or the timeout)";

/// Errors from turning the command line into a VM configuration.
#[derive(Debug, Error)]
pub enum CliError {
    /// Neither `--kernel` nor the config file names a kernel.
    #[error("no kernel given: pass --kernel PATH or set \"kernel\" in --config")]
    NoKernel,
    /// The config file or the merged configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The environment or the network-info file has bad device addresses.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// `fd=N` came before any address in `--device`.
    #[error("--device fd={0} names no device: write it after the address, e.g. --device 0000:03:02.1,fd={0}")]
    FdWithoutDevice(RawFd),
    /// `--devices-from-env` was given but no device was found there.
    #[error("--devices-from-env found no devices: no PCIDEVICE_*/PCI_RESOURCE_* variable lists an address and no network-info file names one; check the pod's resource requests or pass --device")]
    NoEnvDevices,
}

/// `vflaunch`: boot a Linux guest with SR-IOV VFs passed through.
#[derive(Debug, Parser)]
#[command(name = "vflaunch", version, long_about = LONG_ABOUT)]
#[command(about = "Boot a Linux guest under KVM with SR-IOV VFs passed through via VFIO")]
pub struct Cli {
    /// What to do; with none, `--api-socket` starts an empty VMM that waits for `vm.create`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The controls of an API-driven VMM (the launch line of Kata's clh driver).
    #[command(flatten)]
    pub control: ControlArgs,
    /// Log lines on stderr as text, or as JSON for log collectors: one object per line
    /// with time, level, message, target (the module) and thread (vcpuN for a vCPU)
    #[arg(long, global = true, value_enum, value_name = "FORMAT", env = "VFLAUNCH_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[LEVEL] message`, for people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Cli {
    /// The log level `-v` asks for: warn, then info, debug, trace.
    pub fn log_level(&self) -> &'static str {
        let v = match &self.command {
            Some(Command::Run(r)) => r.control.verbose.max(self.control.verbose),
            _ => self.control.verbose,
        };
        ["warn", "info", "debug"]
            .get(usize::from(v))
            .copied()
            .unwrap_or("trace")
    }
}

/// How an orchestrator controls the VMM: API socket, events, lifecycle.
#[derive(Clone, Debug, Args)]
pub struct ControlArgs {
    /// Serve Cloud Hypervisor's REST API (HTTP/1.1, /api/v1/) on this unix socket
    /// (mode 0600; a stale socket is replaced, a live one refused)
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Write lifecycle events as JSON lines: path=PATH or fd=N
    #[arg(long, value_name = "path=PATH|fd=N", value_parser = parse_target)]
    pub event_monitor: Option<EventTarget>,
    /// Seconds the guest gets to power off after SIGTERM presses its power button;
    /// then (or on a second SIGTERM, or SIGINT) it is stopped hard
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    pub shutdown_timeout: u64,
    /// More log lines on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Started as root: switch to this user (UID[:GID]) once the VM is built and its
    /// devices are open; every capability is dropped then either way
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<User>,
    /// Syscall filters per thread: true (a forbidden syscall stops vflaunch, naming it),
    /// log (only logs it), false (no filters)
    #[arg(long, value_name = "true|false|log", default_value = "true", value_parser = ["true", "false", "log"])]
    pub seccomp: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest (flags override --config, which overrides the defaults)
    #[command(after_help = RUN_AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Only run the host pre-flight checks; prints one line per check, exits non-zero on failure
    Check(CheckArgs),
    /// Check the whole SR-IOV host setup, one line per check with the fix; exits 3 if anything failed
    Doctor(DoctorArgs),
    /// Move devices to vfio-pci (driver_override, unbind, probe), recording the driver each had
    Bind(BindArgs),
    /// Give devices bound with `vflaunch bind` back to the driver they had
    Unbind(BindArgs),
    /// Ask a running vflaunch whether its API answers (exit 0 if it does): a readiness probe
    Ping(PingArgs),
    /// Send one API request to a running vflaunch and print the answer
    Api(ApiArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(CompletionsArgs),
    /// Print the vflaunch(1) man page (roff), or write every page into --dir
    Man(ManArgs),
}

/// Where passed-through devices come from; shared by `run` and `check`.
#[derive(Clone, Debug, Args)]
pub struct DeviceArgs {
    /// PCI device to pass through, bound to vfio-pci: DDDD:BB:DD.F or BB:DD.F in hex,
    /// e.g. 0000:03:02.1. Repeat the flag or give a comma-separated list; `BDF,fd=N`
    /// names the device's vfio cdev already opened by the launcher (iommufd backend)
    #[arg(
        long = "device",
        visible_alias = "vfio",
        value_name = "BDF[,fd=N]",
        value_delimiter = ','
    )]
    pub devices: Vec<DeviceToken>,
    /// Also take devices from PCIDEVICE_* / PCI_RESOURCE_* variables and the network-info
    /// file [default: on when no device is given by --device or --config]
    #[arg(long, conflicts_with = "no_devices_from_env")]
    pub devices_from_env: bool,
    /// Never take devices from the environment or the network-info file
    #[arg(long)]
    pub no_devices_from_env: bool,
    /// KubeVirt network-info JSON file to take devices from; always read when given
    /// [default: /etc/podinfo/network-info, if it exists and env intake is on]
    #[arg(long, value_name = "PATH", conflicts_with = "no_devices_from_env")]
    pub network_info: Option<PathBuf>,
}

/// One comma-separated item of `--device`: an address, or the cdev
/// descriptor of the address before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceToken {
    /// A PCI address.
    Bdf(Bdf),
    /// `fd=N`.
    Fd(RawFd),
}

impl std::str::FromStr for DeviceToken {
    type Err = crate::host::bdf::PciAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("fd=").map(str::parse::<RawFd>) {
            Some(Ok(fd)) if fd >= 0 => Ok(DeviceToken::Fd(fd)),
            _ => s.parse().map(DeviceToken::Bdf),
        }
    }
}

/// The addresses given with `--device`, and the descriptors given for them.
pub type Explicit = (Vec<Bdf>, Vec<(Bdf, RawFd)>);

impl DeviceArgs {
    /// The addresses given, and the descriptors given for them.
    pub fn explicit_fds(&self) -> Result<Explicit, CliError> {
        self.explicit()
    }

    fn explicit(&self) -> Result<Explicit, CliError> {
        let (mut bdfs, mut fds) = (Vec::new(), Vec::new());
        for t in &self.devices {
            match *t {
                DeviceToken::Bdf(b) => bdfs.push(b),
                DeviceToken::Fd(fd) => {
                    fds.push((*bdfs.last().ok_or(CliError::FdWithoutDevice(fd))?, fd))
                }
            }
        }
        Ok((bdfs, fds))
    }
}

/// Arguments of `vflaunch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel, bzImage or ELF vmlinux (required here or as "kernel" in --config)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs image [default: none]
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line, under 2048 bytes [default: "console=ttyS0 panic=-1"]
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest memory with a K, M, G or T suffix (binary); a plain number is MiB.
    /// 64M to 1T, a multiple of 2M [default: 512M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Number of vCPUs, 1 to 32 [default: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    pub cpus: Option<u8>,
    /// Device selection.
    #[command(flatten)]
    pub intake: DeviceArgs,
    /// JSON file with the same fields as the flags: {"kernel": "bzImage", "memory": "1G",
    /// "cpus": 2, "devices": ["0000:03:02.1"], ...}; flags override it, devices are merged
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Back guest RAM with 2 MiB huge pages (reserve them first in
    /// /proc/sys/vm/nr_hugepages); makes pinning RAM for device DMA much cheaper
    #[arg(long)]
    pub hugepages: bool,
    /// Boot even if the host IOMMU has no interrupt remapping (a device could then inject
    /// arbitrary interrupts); the host also needs vfio_iommu_type1 allow_unsafe_interrupts=1
    #[arg(long)]
    pub allow_unsafe_interrupts: bool,
    /// Where the guest's serial console goes: tty (this terminal), null (discarded),
    /// off (no UART), file=PATH, or socket=PATH (a unix socket a console client attaches
    /// to at any time; output is kept in a bounded buffer meanwhile) [default: tty]
    #[arg(long, value_name = "MODE", value_parser = parse_serial)]
    pub serial: Option<SerialMode>,
    /// The VFIO interface: iommufd with vfio cdevs, the legacy group/container, or auto
    /// (iommufd when /dev/iommu exists and every device has a cdev) [default: auto]
    #[arg(long, value_name = "auto|group|iommufd")]
    pub vfio_backend: Option<BackendChoice>,
    /// An iommufd (/dev/iommu) already opened by the launcher; with `--device BDF,fd=N`
    /// vflaunch then needs no access to /dev/iommu or /dev/vfio
    #[arg(long, value_name = "N")]
    pub iommufd_fd: Option<RawFd>,
    /// A virtio entropy device fed from the host's getrandom (guest: /dev/hwrng)
    #[arg(long)]
    pub rng: bool,
    /// A virtio-blk disk from a raw image (repeatable): path=IMG[,readonly=on][,direct=on][,id=NAME];
    /// a writable image is locked against a second VM
    #[arg(long, value_name = "path=IMG,...", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// A hybrid virtio-vsock device: cid=N,socket=PATH (host clients write "CONNECT <port>\n"
    /// to PATH; guest connections to host port P go to PATH_P)
    #[arg(long, value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-net device on a tap (repeatable): tap=NAME[,mac=MAC] or fd=N[,mac=MAC]
    #[arg(long, value_name = "tap=NAME|fd=N", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// API socket, events and lifecycle.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Arguments of `vflaunch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Device selection.
    #[command(flatten)]
    pub intake: DeviceArgs,
    /// Guest memory to check RLIMIT_MEMLOCK and available host memory against, same
    /// format as `run --memory`
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512M")]
    pub memory: u64,
    /// Check free 2 MiB huge pages for guest memory (see `run --hugepages`)
    #[arg(long)]
    pub hugepages: bool,
    /// Accept a host without interrupt remapping (see `run --allow-unsafe-interrupts`)
    #[arg(long)]
    pub allow_unsafe_interrupts: bool,
    /// The VFIO interface to check for (see `run --vfio-backend`) [default: auto]
    #[arg(long, value_name = "auto|group|iommufd")]
    pub vfio_backend: Option<BackendChoice>,
    /// An iommufd already opened by the launcher (see `run --iommufd-fd`)
    #[arg(long, value_name = "N")]
    pub iommufd_fd: Option<RawFd>,
}

impl DeviceArgs {
    /// Merges `explicit` devices with the env/network-info intake, without duplicates.
    /// The intake is on with `--devices-from-env`, or by default when `given` is false.
    fn collect(
        &self,
        explicit: impl IntoIterator<Item = Bdf>,
        given: bool,
        env: &[(String, String)],
        default_network_info: &Path,
    ) -> Result<Vec<Bdf>, CliError> {
        let mut out: Vec<Bdf> = Vec::new();
        let push = |out: &mut Vec<Bdf>, bdf: Bdf| {
            if !out.contains(&bdf) {
                out.push(bdf);
            }
        };
        for bdf in explicit {
            push(&mut out, bdf);
        }
        let use_env = self.devices_from_env || (!self.no_devices_from_env && !given);
        let mut found = 0usize;
        if use_env {
            for dev in devices_from_env(env.iter().cloned())?.devices {
                log::info!("device {} from ${}", dev.bdf, dev.source);
                found += 1;
                push(&mut out, dev.bdf);
            }
        }
        let info_path = match &self.network_info {
            Some(path) => Some(path.as_path()),
            None if use_env && default_network_info.exists() => Some(default_network_info),
            None => None,
        };
        if let Some(path) = info_path {
            for (network, bdf) in devices_from_network_info_file(path)? {
                log::info!(
                    "device {bdf} for network {network:?} from {}",
                    path.display()
                );
                found += 1;
                push(&mut out, bdf);
            }
        }
        if self.devices_from_env && found == 0 {
            return Err(CliError::NoEnvDevices);
        }
        Ok(out)
    }
}

impl RunArgs {
    /// Merges flags, the `--config` file and defaults into a validated
    /// [`VmConfig`]. `env` is the process environment (`std::env::vars()`).
    pub fn to_config(&self, env: &[(String, String)]) -> Result<VmConfig, CliError> {
        self.to_config_with(env, Path::new(NETWORK_INFO_PATH))
    }

    fn to_config_with(
        &self,
        env: &[(String, String)],
        default_network_info: &Path,
    ) -> Result<VmConfig, CliError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let virtio = self.virtio(&file)?;
        let kernel = self
            .kernel
            .clone()
            .or(file.kernel)
            .ok_or(CliError::NoKernel)?;
        let (flags, fds) = self.intake.explicit()?;
        let given = !flags.is_empty() || file.devices.is_some();
        let explicit = flags
            .into_iter()
            .chain(file.devices.iter().flatten().copied());
        let devices = self
            .intake
            .collect(explicit, given, env, default_network_info)?;
        let cfg = VmConfig {
            kernel,
            initramfs: self.initramfs.clone().or(file.initramfs),
            cmdline: self
                .cmdline
                .clone()
                .or(file.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            memory: self.memory.or(file.memory).unwrap_or(DEFAULT_MEMORY),
            cpus: self.cpus.or(file.cpus).unwrap_or(1),
            devices,
            hugepages: self.hugepages || file.hugepages.unwrap_or(false),
            allow_unsafe_interrupts: self.allow_unsafe_interrupts
                || file.allow_unsafe_interrupts.unwrap_or(false),
            serial: self.serial.clone().unwrap_or_default(),
            vfio_backend: self.vfio_backend.or(file.vfio_backend).unwrap_or_default(),
            preopened: Preopened {
                iommufd: self.iommufd_fd,
                devices: fds,
            },
            virtio,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl RunArgs {
    /// Flags add disks and nets to the file's; `--vsock` replaces the file's.
    fn virtio(&self, file: &FileConfig) -> Result<VirtioConfig, CliError> {
        let mut disks = self.disk.clone();
        for d in file.disks.iter().flatten() {
            disks.push(parse_disk(d).map_err(ConfigError::from)?);
        }
        let mut net = self.net.clone();
        for n in file.net.iter().flatten() {
            net.push(parse_net(n).map_err(ConfigError::from)?);
        }
        let vsock = match (&self.vsock, &file.vsock) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(s)) => Some(parse_vsock(s).map_err(ConfigError::from)?),
            (None, None) => None,
        };
        Ok(VirtioConfig {
            rng: self.rng || file.rng.unwrap_or(false),
            disks,
            vsock,
            net,
        })
    }
}

impl CheckArgs {
    /// The devices to check: `--device` plus the env/network-info intake
    /// (same rules as `run`). `env` is the process environment.
    pub fn devices(&self, env: &[(String, String)]) -> Result<Vec<Bdf>, CliError> {
        self.devices_with(env, Path::new(NETWORK_INFO_PATH))
    }

    fn devices_with(
        &self,
        env: &[(String, String)],
        default_network_info: &Path,
    ) -> Result<Vec<Bdf>, CliError> {
        let (explicit, _) = self.intake.explicit()?;
        let given = !explicit.is_empty();
        self.intake
            .collect(explicit, given, env, default_network_info)
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
