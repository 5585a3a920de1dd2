//! x86_64 specifics: memory layout, boot protocol, registers, CPUID, ACPI.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod regs;
