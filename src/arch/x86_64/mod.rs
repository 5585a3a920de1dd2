//! x86_64 specifics: memory layout, boot protocol, registers, CPUID, the TSC rate, ACPI.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod regs;
pub mod tsc;
