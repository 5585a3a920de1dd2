//! What each subcommand does, from parsed arguments to an exit code; every
//! failure becomes one line on stderr.

use crate::cli::{CheckArgs, Cli, Command, RunArgs};
use crate::error::{error_chain, exit_code};
use crate::exit::ExitReason;
use crate::host::checks::HostPaths;
use crate::host::preflight::{self, Request};
use crate::{cli, config, host, intake, vmm};

/// Top-level error: which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or configuration.
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    /// Bad configuration values.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A host pre-flight check failed.
    #[error(transparent)]
    Host(#[from] host::checks::HostError),
    /// Building or running the VM failed.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) | Error::Config(_) => exit_code::USAGE,
            Error::Host(_) => exit_code::HOST,
            Error::Vmm(_) => exit_code::VMM,
        }
    }
}

fn run(args: RunArgs, env: &[(String, String)]) -> Result<ExitReason, Error> {
    let cfg = args.into_config(env)?;
    let req = Request {
        devices: &cfg.devices,
        memory: cfg.memory,
        allow_unsafe_interrupts: cfg.allow_unsafe_interrupts,
        hugepages: cfg.hugepages,
    };
    let devices = preflight::preflight(&HostPaths::default(), &req)?;
    Ok(vmm::run(&cfg, &devices)?)
}

fn check(args: CheckArgs, env: &[(String, String)]) -> Result<i32, Error> {
    let devices = args.devices(env)?;
    let req = Request {
        devices: &devices,
        memory: args.memory,
        allow_unsafe_interrupts: args.allow_unsafe_interrupts,
        hugepages: args.hugepages,
    };
    Ok(preflight::report(
        &HostPaths::default(),
        &req,
        &mut std::io::stdout(),
    ))
}

/// Runs the parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    let env = intake::process_env();
    let result = match cli.command {
        Command::Run(args) => run(args, &env).map(|reason| {
            let code = reason.exit_code();
            if code != 0 {
                eprintln!("vflaunch: {reason} (exit code {code})");
            }
            code
        }),
        Command::Check(args) => check(args, &env),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vflaunch: error: {}", error_chain(&e));
        e.exit_code()
    })
}
