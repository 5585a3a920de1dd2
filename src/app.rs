//! What each subcommand does, from parsed arguments to an exit code; every
//! failure becomes one line on stderr.

use std::time::Duration;

use crate::api::client;
use crate::cli::{
    ApiArgs, BindArgs, CheckArgs, Cli, Command, ControlArgs, DoctorArgs, ManArgs, PingArgs, RunArgs,
};
use crate::control::{request_for, ControlError, Controller, Options};
use crate::error::{error_chain, exit_code};
use crate::generate::{self, GenerateError};
use crate::host::backend::Preopened;
use crate::host::checks::HostPaths;
use crate::host::preflight::{self, Request};
use crate::host::{bind, doctor};
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
    /// The API socket, the event monitor or signal plumbing.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Building or running the VM failed.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// The API of a running vflaunch could not be reached.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// `vflaunch api --tap`.
    #[error(transparent)]
    Tap(#[from] crate::virtio::tap::TapError),
    /// A body file for `vflaunch api` could not be read.
    #[error("cannot read the request body file {0}")]
    BodyFile(String, #[source] crate::bounded::ReadError),
    /// A man page or completion script could not be written.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Syscall filters asked for and not possible.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// No subcommand and no API socket.
    #[error("nothing to do: give a subcommand (run, check, doctor, bind, unbind, ping, api) or --api-socket PATH")]
    NothingToDo,
    /// `bind` or `unbind` refused or failed.
    #[error(transparent)]
    Bind(#[from] host::bind::BindError),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) | Error::Config(_) | Error::NothingToDo | Error::BodyFile(..) => {
                exit_code::USAGE
            }
            Error::Host(_) | Error::Bind(_) | Error::Seccomp(_) => exit_code::HOST,
            Error::Control(_)
            | Error::Vmm(_)
            | Error::Client(_)
            | Error::Generate(_)
            | Error::Tap(_) => exit_code::VMM,
        }
    }
}

fn options(c: &ControlArgs) -> Result<Options, Error> {
    crate::seccomp::set_mode(c.seccomp.parse().unwrap_or_default())?;
    Ok(Options {
        api_socket: c.api_socket.clone(),
        event_monitor: c.event_monitor.clone(),
        shutdown_timeout: Duration::from_secs(c.shutdown_timeout),
        user: c.user,
    })
}

fn run(args: RunArgs, env: &[(String, String)]) -> Result<i32, Error> {
    let controller = Controller::new(options(&args.control)?, HostPaths::default())?;
    let cfg = args.to_config(env)?;
    let checked = preflight::preflight(&HostPaths::default(), &request_for(&cfg))?;
    Ok(controller.run_vm(cfg, &checked)?)
}

fn check(args: CheckArgs, env: &[(String, String)]) -> Result<i32, Error> {
    let devices = args.devices(env)?;
    let (_, fds) = args.intake.explicit_fds()?;
    let preopened = Preopened {
        iommufd: args.iommufd_fd,
        devices: fds,
    };
    let req = Request {
        devices: &devices,
        memory: args.memory,
        allow_unsafe_interrupts: args.allow_unsafe_interrupts,
        hugepages: args.hugepages,
        backend: args.vfio_backend.unwrap_or_default(),
        preopened: &preopened,
    };
    Ok(preflight::report(
        &HostPaths::default(),
        &req,
        &mut std::io::stdout(),
    ))
}

fn doctor(args: DoctorArgs) -> i32 {
    let req = doctor::Request {
        devices: &args.devices,
        memory: args.memory,
    };
    let probes = doctor::Probes {
        memlock: &host::checks::check_memlock,
        vf_links: &doctor::netlink::vf_links,
    };
    doctor::report(
        &HostPaths::default(),
        &req,
        &probes,
        args.json,
        &mut std::io::stdout(),
    )
}

fn bind(args: BindArgs, to_vfio: bool) -> Result<i32, Error> {
    let p = HostPaths::default();
    let out = &mut std::io::stdout();
    if to_vfio {
        bind::bind(&p, &bind::Sysfs, &args.devices, out)?;
    } else {
        bind::unbind(&p, &bind::Sysfs, &args.devices, out)?;
    }
    Ok(exit_code::OK)
}

fn ping(args: PingArgs) -> Result<i32, Error> {
    let t = Duration::from_secs(args.timeout);
    let a = client::call(&args.api_socket, "GET", "vmm.ping", None, t)?;
    println!("{}", a.body);
    Ok(if a.status == 200 {
        exit_code::OK
    } else {
        exit_code::VMM
    })
}

fn api(args: ApiArgs) -> Result<i32, Error> {
    let body = match args.body.as_deref() {
        Some(b) if b.starts_with('@') => {
            let path = &b[1..];
            Some(
                crate::bounded::read_text(
                    std::path::Path::new(path),
                    crate::bounded::BODY_MAX,
                    crate::bounded::Kind::Regular,
                )
                .map_err(|e| Error::BodyFile(path.to_string(), e))?,
            )
        }
        other => other.map(str::to_string),
    };
    let t = Duration::from_secs(args.timeout);
    let tap = args
        .tap
        .as_deref()
        .map(crate::virtio::tap::Tap::open)
        .transpose()?;
    let fds: Vec<_> = tap
        .iter()
        .map(|t| std::os::fd::AsRawFd::as_raw_fd(&t.file))
        .collect();
    let a = client::call_with_fds(
        &args.api_socket,
        &args.method,
        &args.endpoint,
        body.as_deref(),
        &fds,
        t,
    )?;
    if !a.body.is_empty() {
        println!("{}", a.body);
    }
    eprintln!("vflaunch: HTTP {}", a.status);
    Ok(if (200..300).contains(&a.status) {
        exit_code::OK
    } else {
        exit_code::VMM
    })
}

fn man(args: ManArgs) -> Result<i32, Error> {
    match &args.dir {
        Some(dir) => generate::man_pages_to(dir)?,
        None => generate::man_page(&mut std::io::stdout().lock())?,
    }
    Ok(exit_code::OK)
}

/// Runs the parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    let env = intake::process_env();
    let result = match cli.command {
        Some(Command::Run(args)) => run(*args, &env),
        Some(Command::Check(args)) => check(args, &env),
        Some(Command::Ping(args)) => ping(args),
        Some(Command::Api(args)) => api(args),
        Some(Command::Doctor(args)) => Ok(doctor(args)),
        Some(Command::Bind(args)) => bind(args, true),
        Some(Command::Unbind(args)) => bind(args, false),
        Some(Command::Completions(args)) => {
            generate::completions(args.shell, &mut std::io::stdout().lock())
                .map(|()| exit_code::OK)
                .map_err(Error::from)
        }
        Some(Command::Man(args)) => man(args),
        None if cli.control.api_socket.is_some() => options(&cli.control).and_then(|o| {
            Controller::new(o, HostPaths::default())
                .map(Controller::run_api)
                .map_err(Error::from)
        }),
        None => Err(Error::NothingToDo),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vflaunch: error: {}", error_chain(&e));
        e.exit_code()
    })
}
