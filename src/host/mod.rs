//! The host side: device addresses (`bdf`), the host checks (`checks`) and
//! the one pre-flight sequence over them (`preflight`), and the terminal the
//! guest console runs on (`terminal`).

pub mod backend;
pub mod bdf;
pub mod checks;
pub mod console_socket;
#[cfg(test)]
pub mod fake;
pub mod preflight;
pub mod read;
pub mod terminal;
