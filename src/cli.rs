//! The command line (`vflaunch run` / `vflaunch check`) and how it is merged
//! with the `--config` file and the pod's device sources into a [`VmConfig`].

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

use crate::config::{
    parse_size, ConfigError, FileConfig, VmConfig, DEFAULT_CMDLINE, DEFAULT_MEMORY, MAX_CPUS,
};
use crate::host::bdf::Bdf;
use crate::intake::{
    devices_from_env, devices_from_network_info_file, IntakeError, NETWORK_INFO_PATH,
};

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

Run `vflaunch check` first to verify KVM, the IOMMU, vfio-pci binding and memlock.";

/// Printed after `vflaunch run --help`: the console, logging and exit codes.
const RUN_AFTER_HELP: &str = "\
The guest's serial console is this terminal (stdin/stdout); Ctrl-A x quits.
Logs go to stderr: RUST_LOG=info (or debug).

Exit codes:
  0    the guest powered off (or reset through the i8042 controller, reboot=k)
  1    the VMM failed (one line on stderr says where)
  2    bad command line or configuration
  3    a host pre-flight check failed (see `vflaunch check`)
  4    the guest rebooted, triple-faulted or panicked (panic=-1)
  128+N stopped by signal N (Ctrl-A x counts as SIGINT)";

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
    /// `--devices-from-env` was given but no device was found there.
    #[error("--devices-from-env found no devices: no PCIDEVICE_*/PCI_RESOURCE_* variable lists an address and no network-info file names one; check the pod's resource requests or pass --device")]
    NoEnvDevices,
}

/// `vflaunch`: boot a Linux guest with SR-IOV VFs passed through.
#[derive(Debug, Parser)]
#[command(name = "vflaunch", version, long_about = LONG_ABOUT)]
#[command(about = "Boot a Linux guest under KVM with SR-IOV VFs passed through via VFIO")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest (flags override --config, which overrides the defaults)
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Only run the host pre-flight checks; prints one line per check, exits non-zero on failure
    Check(CheckArgs),
}

/// Where passed-through devices come from; shared by `run` and `check`.
#[derive(Clone, Debug, Args)]
pub struct DeviceArgs {
    /// PCI device to pass through, bound to vfio-pci: DDDD:BB:DD.F or BB:DD.F in hex,
    /// e.g. 0000:03:02.1. Repeat the flag or give a comma-separated list
    #[arg(
        long = "device",
        visible_alias = "vfio",
        value_name = "BDF",
        value_delimiter = ','
    )]
    pub devices: Vec<Bdf>,
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
    pub fn into_config(self, env: &[(String, String)]) -> Result<VmConfig, CliError> {
        self.into_config_with(env, Path::new(NETWORK_INFO_PATH))
    }

    fn into_config_with(
        self,
        env: &[(String, String)],
        default_network_info: &Path,
    ) -> Result<VmConfig, CliError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let kernel = self.kernel.or(file.kernel).ok_or(CliError::NoKernel)?;
        let given = !self.intake.devices.is_empty() || file.devices.is_some();
        let explicit = self
            .intake
            .devices
            .iter()
            .chain(file.devices.iter().flatten())
            .copied();
        let devices = self
            .intake
            .collect(explicit, given, env, default_network_info)?;
        let cfg = VmConfig {
            kernel,
            initramfs: self.initramfs.or(file.initramfs),
            cmdline: self
                .cmdline
                .or(file.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            memory: self.memory.or(file.memory).unwrap_or(DEFAULT_MEMORY),
            cpus: self.cpus.or(file.cpus).unwrap_or(1),
            devices,
            hugepages: self.hugepages || file.hugepages.unwrap_or(false),
            allow_unsafe_interrupts: self.allow_unsafe_interrupts
                || file.allow_unsafe_interrupts.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
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
        let explicit = self.intake.devices.iter().copied();
        let given = !self.intake.devices.is_empty();
        self.intake
            .collect(explicit, given, env, default_network_info)
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
