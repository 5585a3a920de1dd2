//! PCI addresses (`domain:bus:device.function`, "BDF") as given by users,
//! the SR-IOV device plugin and sysfs.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Largest valid PCI device number.
const MAX_DEVICE: u8 = 0x1f;
/// Largest valid PCI function number.
const MAX_FUNCTION: u8 = 7;

/// Errors from parsing a PCI address.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PciAddrError {
    /// The address is empty or only whitespace.
    #[error("empty PCI address: give one like 0000:03:02.1")]
    Empty,
    /// The address does not have the `[DDDD:]BB:DD.F` shape or has non-hex digits.
    #[error("invalid PCI address {0:?}: use hex DDDD:BB:DD.F or BB:DD.F, e.g. 0000:03:02.1")]
    Format(String),
    /// The device number is above 0x1f.
    #[error("invalid PCI address {0:?}: the device number must be 00..1f")]
    Device(String),
    /// The function number is above 7.
    #[error("invalid PCI address {0:?}: the function number must be 0..7")]
    Function(String),
}

/// A PCI address: segment (domain), bus, device and function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain), usually 0.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=0x1f.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Parses 1..=`max_digits` hex digits (no sign, no prefix).
fn hex_field(s: &str, max_digits: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = PciAddrError;

    /// Parses `0000:03:02.1` or `03:02.1` (domain 0); hex, case-insensitive,
    /// surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PciAddrError::Empty);
        }
        let bad = || PciAddrError::Format(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [bus, devfn] => (Some(0), *bus, *devfn),
            [domain, bus, devfn] => (hex_field(domain, 4), *bus, *devfn),
            _ => return Err(bad()),
        };
        let (device, function) = devfn.split_once('.').ok_or_else(bad)?;
        let (Some(domain), Some(bus), Some(device), Some(function)) = (
            domain,
            hex_field(bus, 2),
            hex_field(device, 2),
            hex_field(function, 1),
        ) else {
            return Err(bad());
        };
        let device = u8::try_from(device)
            .ok()
            .filter(|d| *d <= MAX_DEVICE)
            .ok_or_else(|| PciAddrError::Device(s.to_string()))?;
        let function = u8::try_from(function)
            .ok()
            .filter(|f| *f <= MAX_FUNCTION)
            .ok_or_else(|| PciAddrError::Function(s.to_string()))?;
        Ok(Bdf {
            domain,
            // Two hex digits always fit in a u8.
            bus: u8::try_from(bus).map_err(|_| bad())?,
            device,
            function,
        })
    }
}

impl fmt::Display for Bdf {
    /// Formats as `0000:03:02.1` (lowercase hex), the form sysfs uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl<'de> serde::Deserialize<'de> for Bdf {
    /// Deserializes from a string such as `"0000:03:02.1"`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(domain: u16, bus: u8, device: u8, function: u8) -> Bdf {
        Bdf {
            domain,
            bus,
            device,
            function,
        }
    }

    #[test]
    fn parses_full_and_short_forms() {
        assert_eq!("0000:03:02.1".parse(), Ok(bdf(0, 3, 2, 1)));
        assert_eq!("03:02.1".parse(), Ok(bdf(0, 3, 2, 1)));
        assert_eq!("ABCD:Ff:1F.7".parse(), Ok(bdf(0xabcd, 0xff, 0x1f, 7)));
        assert_eq!("  0001:65:00.2\n".parse(), Ok(bdf(1, 0x65, 0, 2)));
        assert_eq!("0:3:2.1".parse(), Ok(bdf(0, 3, 2, 1)));
    }

    #[test]
    fn display_is_canonical_sysfs_form() {
        assert_eq!(bdf(0, 3, 2, 1).to_string(), "0000:03:02.1");
        assert_eq!(bdf(0xabcd, 0xff, 0x1f, 7).to_string(), "abcd:ff:1f.7");
        let parsed: Bdf = "3b:2.6".parse().unwrap();
        assert_eq!(parsed.to_string(), "0000:3b:02.6");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "0000:03:02",
            "0000:03:02.",
            "00000:03:02.1",
            "0000:003:02.1",
            "0000:03:002.1",
            "0000:03:02.10",
            "0000:03:02.g",
            "+000:03:02.1",
            "0000:+3:02.1",
            "0000:03:02.1:5",
            "03.02.1",
            "0000::02.1",
            "/sys/bus/pci/devices/0000:03:02.1",
            "0000:03:02.1,0000:03:02.2",
            "ünï:03:02.1",
        ] {
            assert!(
                matches!(bad.parse::<Bdf>(), Err(PciAddrError::Format(_))),
                "{bad} should be a format error"
            );
        }
        assert_eq!("  ".parse::<Bdf>(), Err(PciAddrError::Empty));
    }

    #[test]
    fn rejects_out_of_range_device_and_function() {
        assert_eq!(
            "0000:03:20.1".parse::<Bdf>(),
            Err(PciAddrError::Device("0000:03:20.1".into()))
        );
        assert_eq!(
            "0000:03:02.8".parse::<Bdf>(),
            Err(PciAddrError::Function("0000:03:02.8".into()))
        );
    }

    #[test]
    fn error_message_shows_the_input_and_an_example() {
        let msg = "zz".parse::<Bdf>().unwrap_err().to_string();
        assert!(
            msg.contains("\"zz\"") && msg.contains("0000:03:02.1"),
            "{msg}"
        );
    }

    #[test]
    fn orders_by_domain_bus_device_function() {
        let mut v = [bdf(0, 4, 0, 0), bdf(0, 3, 2, 1), bdf(0, 3, 2, 0)];
        v.sort();
        assert_eq!(v, [bdf(0, 3, 2, 0), bdf(0, 3, 2, 1), bdf(0, 4, 0, 0)]);
    }

    #[test]
    fn deserializes_from_json_string() {
        let v: Vec<Bdf> = serde_json::from_str(r#"["0000:03:02.1","04:00.0"]"#).unwrap();
        assert_eq!(v, [bdf(0, 3, 2, 1), bdf(0, 4, 0, 0)]);
        let err = serde_json::from_str::<Bdf>(r#""nope""#).unwrap_err();
        assert!(err.to_string().contains("invalid PCI address"), "{err}");
    }
}
