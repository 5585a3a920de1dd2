//! Emulated platform devices and the buses they sit on.

pub mod acpi_pm;
pub mod bus;
pub mod console_output;
pub mod ged;
pub mod i8042;
pub mod serial;

/// A writer that keeps everything written to it in a shared buffer, so a
/// test (or a fuzz target) can read back what a device sent to its sink.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Default)]
pub(crate) struct SharedSink(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "fuzzing"))]
impl std::io::Write for SharedSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
