//! Emulated platform devices and the buses they sit on.

pub mod acpi_pm;
pub mod bus;
pub mod console_output;
pub mod ged;
pub mod i8042;
pub mod serial;
