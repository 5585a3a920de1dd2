//! Reading small files from outside (request bodies given by path): a
//! regular file, at most [`MAX_SMALL_FILE`] bytes.

use std::io::Read;

/// The largest small file read.
pub const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads `path` as UTF-8 text, refusing anything but a regular file of at
/// most [`MAX_SMALL_FILE`] bytes.
pub fn read_capped(path: &str) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_SMALL_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SMALL_FILE {
        return Err(std::io::Error::other("over 1 MiB"));
    }
    Ok(text)
}
