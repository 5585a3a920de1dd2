//! The `vflaunch` binary: parse the command line, set up logging, run.

use clap::Parser;

fn main() {
    let cli = match vflaunch::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(cli.log_level()))
        .format_target(false)
        .init();
    std::process::exit(vflaunch::execute(cli));
}
