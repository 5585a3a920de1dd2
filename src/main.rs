//! The `vflaunch` binary: parse the command line, set up logging, run the
//! pre-flight checks and the VM, and turn the outcome into one line on
//! stderr and an exit code.

use clap::Parser;
use vflaunch::cli::{CheckArgs, Cli, Command, RunArgs};
use vflaunch::exit::ExitReason;
use vflaunch::vfio::host::{self, HostPaths};
use vflaunch::{error_chain, vmm, Error};

fn run(args: RunArgs, env: &[(String, String)]) -> Result<ExitReason, Error> {
    let cfg = args.into_config(env)?;
    cfg.validate()?;
    let devices = host::preflight(&HostPaths::default(), &cfg)?;
    Ok(vmm::run(&cfg, &devices)?)
}

fn check(args: CheckArgs, env: &[(String, String)]) -> i32 {
    match args.devices(env) {
        Ok(devices) => vflaunch::check::report(
            &HostPaths::default(),
            &devices,
            args.memory,
            args.allow_unsafe_interrupts,
            &mut std::io::stdout(),
        ),
        Err(e) => {
            let e = Error::from(e);
            eprintln!("vflaunch: error: {}", error_chain(&e));
            e.exit_code()
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let env = vflaunch::intake::process_env();
    let code = match cli.command {
        Command::Run(args) => match run(args, &env) {
            Ok(reason) => {
                let code = reason.exit_code();
                if code != 0 {
                    eprintln!("vflaunch: {reason} (exit code {code})");
                }
                code
            }
            Err(e) => {
                eprintln!("vflaunch: error: {}", error_chain(&e));
                e.exit_code()
            }
        },
        Command::Check(args) => check(args, &env),
    };
    std::process::exit(code);
}
