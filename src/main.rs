//! The `vflaunch` binary: parse the command line, set up logging, run.

use std::io::Write;

use clap::Parser;
use vflaunch::LogFormat;

fn main() {
    let cli = match vflaunch::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    // RUST_LOG filters in both formats; -v sets the default level.
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.log_level()),
    );
    match cli.log_format {
        LogFormat::Text => logger.format_target(false).format_timestamp(None),
        LogFormat::Json => logger.format(json_line),
    };
    logger.init();
    std::process::exit(vflaunch::execute(cli));
}

/// One log record as one JSON object on one line: time (RFC 3339, UTC),
/// level, message, target (the module it came from) and thread (`vcpu0`, ...).
fn json_line(buf: &mut env_logger::fmt::Formatter, record: &log::Record) -> std::io::Result<()> {
    let mut line = serde_json::json!({
        "time": buf.timestamp_micros().to_string(),
        "level": record.level().as_str(),
        "message": record.args().to_string(),
        "target": record.target(),
    });
    if let Some(name) = std::thread::current().name() {
        line["thread"] = name.into();
    }
    writeln!(buf, "{line}")
}
