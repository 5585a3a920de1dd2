//! Tests for the ACPI tables, with a small AML and resource decoder.

use super::*;

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
}

/// The only place these tests build a `PciWindows`: (start, size) of the
/// 32-bit and of the 64-bit window.
fn pci_windows(mmio32: (u64, u64), mmio64: (u64, u64)) -> PciWindows {
    PciWindows {
        mmio32: layout::Window::new(mmio32.0, mmio32.1),
        mmio64: layout::Window::new(mmio64.0, mmio64.1),
    }
}

fn windows() -> PciWindows {
    layout::GuestLayout::new(64 << 20).pci()
}

#[test]
fn tables_are_linked_and_checksummed() {
    let mem =
        crate::memory::create_guest_memory(&layout::GuestLayout::new(64 << 20), false).unwrap();
    let rsdp = write_tables(&mem, 2, windows()).unwrap();
    let mut r = [0u8; 36];
    mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert!(checksum_ok(&r[0..20]) && checksum_ok(&r));
    let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
    let mut hdr = [0u8; 36];
    mem.read_slice(&mut hdr, GuestAddress(xsdt)).unwrap();
    assert_eq!(&hdr[0..4], b"XSDT");
    let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, 36 + 24);
    let mut x = vec![0u8; len];
    mem.read_slice(&mut x, GuestAddress(xsdt)).unwrap();
    assert!(checksum_ok(&x));
    let mut sigs = Vec::new();
    for i in 0..3 {
        let a = u64::from_le_bytes(x[36 + 8 * i..44 + 8 * i].try_into().unwrap());
        let mut h = [0u8; 8];
        mem.read_slice(&mut h, GuestAddress(a)).unwrap();
        let l = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut t = vec![0u8; l];
        mem.read_slice(&mut t, GuestAddress(a)).unwrap();
        assert!(checksum_ok(&t), "bad checksum in {:?}", &h[0..4]);
        sigs.push(h[0..4].to_vec());
    }
    assert_eq!(
        sigs,
        vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
    );
}

#[test]
fn fadt_is_hw_reduced_with_pm_registers() {
    let f = fadt(0x1234);
    assert_eq!(&f[0..4], b"FACP");
    let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
    assert_ne!(flags & (1 << 20), 0);
    assert_ne!(flags & (1 << 10), 0);
    // RESET_REG (GAS at 116): SystemIO, 8 bits, port.
    assert_eq!(f[116], 1);
    assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x600);
    assert_eq!(f[128], RESET_VALUE);
    // X_DSDT at 140.
    assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0x1234);
    // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
    assert_eq!(f[244], 1);
    assert_eq!(u64::from_le_bytes(f[248..256].try_into().unwrap()), 0x600);
    assert_eq!(u64::from_le_bytes(f[260..268].try_into().unwrap()), 0x600);
}

#[test]
fn madt_lists_every_cpu() {
    let m = madt(3);
    assert_eq!(&m[0..4], b"APIC");
    assert_eq!(m.len(), 44 + 3 * 8 + 12);
    assert!(checksum_ok(&m));
}

#[test]
fn mcfg_points_at_ecam_for_bus_0() {
    let m = mcfg();
    assert_eq!(&m[0..4], b"MCFG");
    assert_eq!(m.len(), 44 + 16);
    assert_eq!(
        u64::from_le_bytes(m[44..52].try_into().unwrap()),
        layout::PCI_ECAM_START.0
    );
    assert_eq!((m[54], m[55]), (0, 0), "bus range 0..=0");
    assert!(checksum_ok(&m));
}

/// A decoded AML data object (only the kinds our DSDT uses).
#[derive(Debug, PartialEq)]
enum Obj {
    Int(u64),
    Str(String),
    Buffer(Vec<u8>),
    Package(Vec<Obj>),
    /// OperationRegion: space, offset, length.
    Region(u8, u64, u64),
    /// Field: its named units, with their widths in bits.
    Field(Vec<(String, usize)>),
    /// Method: argument count and flags, and the undecoded body.
    Method(u8, Vec<u8>),
}

/// A resource descriptor of a `_CRS` buffer (ACPI 6.5, section 6.4).
#[derive(Debug, PartialEq)]
enum Res {
    /// Word, DWord or QWord address space; kind 0 memory, 1 I/O, 2 bus numbers.
    Space {
        kind: u8,
        min: u64,
        max: u64,
        len: u64,
    },
    /// I/O port descriptor.
    Io { min: u16, max: u16, len: u8 },
    /// IRQ or extended interrupt descriptor: the interrupt numbers.
    Irq(Vec<u32>),
    /// 32-bit fixed memory range: base, length.
    Mem32 { base: u32, len: u32 },
}

/// A bounded reader over AML bytes: every read past the end is `None`.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.b.get(..n)?;
        self.b = &self.b[n..];
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A little-endian unsigned integer of `n` (at most 8) bytes.
    fn le(&mut self, n: usize) -> Option<u64> {
        let b = self.take(n)?;
        Some(b.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
    }

    /// A PkgLength (it counts its own bytes) and the body it covers.
    fn package(&mut self) -> Option<Reader<'a>> {
        let whole = self.b;
        let lead = self.byte()?;
        let extra = usize::from(lead >> 6);
        let mut len = usize::from(if extra == 0 { lead & 0x3f } else { lead & 0x0f });
        for i in 0..extra {
            len |= usize::from(self.byte()?) << (4 + 8 * i);
        }
        let body = whole.get(1 + extra..len)?;
        self.b = &whole[len..];
        Some(Reader { b: body })
    }

    /// A NameString: an optional root prefix and one NameSeg.
    fn name(&mut self) -> Option<String> {
        let root = self.b.first() == Some(&b'\\');
        self.take(usize::from(root))?;
        let seg = self.take(4)?;
        let ok = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_';
        if !seg.iter().all(ok) {
            return None;
        }
        let seg = String::from_utf8_lossy(seg);
        Some(if root { format!("\\{seg}") } else { seg.into() })
    }

    /// A DataObject: an integer, a buffer or a package.
    fn data(&mut self) -> Option<Obj> {
        Some(match self.byte()? {
            0x00 => Obj::Int(0),
            0x01 => Obj::Int(1),
            0x0a => Obj::Int(self.le(1)?),
            0x0b => Obj::Int(self.le(2)?),
            0x0c => Obj::Int(self.le(4)?),
            0x0e => Obj::Int(self.le(8)?),
            0x0d => {
                let end = self.b.iter().position(|&c| c == 0)?;
                let text = String::from_utf8(self.take(end)?.to_vec()).ok()?;
                self.take(1)?;
                Obj::Str(text)
            }
            0x11 => {
                let mut body = self.package()?;
                let Obj::Int(size) = body.data()? else {
                    return None;
                };
                // AML allows a shorter initializer; ours are always exact.
                (size == body.b.len() as u64).then(|| Obj::Buffer(body.b.to_vec()))?
            }
            0x12 => {
                let mut body = self.package()?;
                let count = body.byte()?;
                let items: Option<Vec<Obj>> = (0..count).map(|_| body.data()).collect();
                body.b.is_empty().then_some(Obj::Package(items?))?
            }
            _ => return None,
        })
    }
}

/// Every named object of an AML term list by full path (`\_SB_.PCI0._CRS`);
/// `None` unless all of it decodes as Scope, Device and Name terms.
fn named_objects(aml: &[u8]) -> Option<Vec<(String, Obj)>> {
    fn path(scope: &str, name: &str) -> String {
        match (name.starts_with('\\'), scope) {
            (true, _) => name.to_string(),
            (false, "\\") => format!("\\{name}"),
            _ => format!("{scope}.{name}"),
        }
    }
    fn walk(mut r: Reader, scope: &str, out: &mut Vec<(String, Obj)>) -> Option<()> {
        while let Some(op) = r.byte() {
            match op {
                0x08 => {
                    let name = path(scope, &r.name()?);
                    out.push((name, r.data()?));
                }
                0x10 => {
                    let mut body = r.package()?;
                    let name = path(scope, &body.name()?);
                    walk(body, &name, out)?;
                }
                0x14 => {
                    let mut body = r.package()?;
                    let name = path(scope, &body.name()?);
                    let flags = body.byte()?;
                    out.push((name, Obj::Method(flags, body.b.to_vec())));
                }
                0x5b => match r.byte()? {
                    0x82 => {
                        let mut body = r.package()?;
                        let name = path(scope, &body.name()?);
                        walk(body, &name, out)?;
                    }
                    0x80 => {
                        let name = path(scope, &r.name()?);
                        let space = r.byte()?;
                        let (Obj::Int(off), Obj::Int(len)) = (r.data()?, r.data()?) else {
                            return None;
                        };
                        out.push((name, Obj::Region(space, off, len)));
                    }
                    0x81 => {
                        let mut body = r.package()?;
                        let name = path(scope, &body.name()?);
                        body.byte()?; // access, lock and update rules
                        let mut units = Vec::new();
                        while !body.b.is_empty() {
                            let unit = body.name()?;
                            // A unit's width is a PkgLength-style number of bits.
                            let lead = body.byte()?;
                            if lead >> 6 != 0 {
                                return None;
                            }
                            units.push((unit, usize::from(lead & 0x3f)));
                        }
                        out.push((name, Obj::Field(units)));
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
        Some(())
    }
    let mut out = Vec::new();
    walk(Reader { b: aml }, "\\", &mut out)?;
    Some(out)
}

/// The descriptors of a resource template, up to and including its end
/// tag; `None` on anything short, unknown or trailing.
fn resources(buf: &[u8]) -> Option<Vec<Res>> {
    let mut r = Reader { b: buf };
    let mut out = Vec::new();
    loop {
        let tag = r.byte()?;
        if tag & 0x80 == 0 {
            let mut d = Reader {
                b: r.take(usize::from(tag & 7))?,
            };
            match tag >> 3 {
                0x0f => return (d.b.len() == 1 && r.b.is_empty()).then_some(out),
                0x08 => {
                    d.byte()?; // decode 16 bits
                    let (min, max) = (d.le(2)? as u16, d.le(2)? as u16);
                    d.byte()?; // alignment
                    out.push(Res::Io {
                        min,
                        max,
                        len: d.byte()?,
                    });
                }
                0x04 => {
                    let mask = d.le(2)?;
                    out.push(Res::Irq((0..16).filter(|i| mask >> i & 1 == 1).collect()));
                }
                _ => return None,
            }
            continue;
        }
        let size = r.le(2)? as usize;
        let mut d = Reader { b: r.take(size)? };
        match tag & 0x7f {
            item @ (0x07 | 0x08 | 0x0a) => {
                let width = [(0x08, 2), (0x07, 4), (0x0a, 8)]
                    .iter()
                    .find(|(i, _)| *i == item)?
                    .1;
                if size != 3 + 5 * width {
                    return None;
                }
                let kind = d.byte()?;
                d.take(2)?; // general and type-specific flags
                let mut f = [0u64; 5]; // granularity, min, max, translation, length
                for v in &mut f {
                    *v = d.le(width)?;
                }
                out.push(Res::Space {
                    kind,
                    min: f[1],
                    max: f[2],
                    len: f[4],
                });
            }
            0x06 => {
                d.byte()?; // read/write
                let (base, len) = (d.le(4)? as u32, d.le(4)? as u32);
                out.push(Res::Mem32 { base, len });
            }
            0x09 => {
                d.byte()?; // flags
                let n = d.byte()?;
                let irqs: Option<Vec<u32>> = (0..n).map(|_| Some(d.le(4)? as u32)).collect();
                out.push(Res::Irq(irqs?));
            }
            _ => return None,
        }
    }
}

fn lookup<'a>(objs: &'a [(String, Obj)], path: &str) -> &'a Obj {
    let found = objs.iter().find(|(n, _)| n == path);
    &found.unwrap_or_else(|| panic!("no {path} in the dsdt")).1
}

fn crs(objs: &[(String, Obj)], path: &str) -> Vec<Res> {
    let Obj::Buffer(b) = lookup(objs, path) else {
        panic!("{path} is not a buffer");
    };
    resources(b).unwrap_or_else(|| panic!("{path} does not decode: {b:02x?}"))
}

#[test]
fn dsdt_host_bridge_crs_decodes_to_the_given_windows() {
    let from_layout = (
        (layout::PCI_MMIO32_START.0, layout::PCI_MMIO32_SIZE),
        (layout::PCI_MMIO64_MIN_START.0, layout::PCI_MMIO64_SIZE),
    );
    let elsewhere = ((0x8000_0000, 0x1000_0000), (0x40_0000_0000, 0x2_0000_0000));
    for (m32, m64) in [from_layout, elsewhere] {
        let dsdt = dsdt_aml(pci_windows(m32, m64));
        let objs = named_objects(&dsdt).expect("the dsdt decodes to its end");
        let res = crs(&objs, "\\_SB_.PCI0._CRS");
        let spaces = |kind: u8| -> Vec<(u64, u64, u64)> {
            let of_kind = |r: &Res| match *r {
                Res::Space {
                    kind: k,
                    min,
                    max,
                    len,
                } if k == kind => Some((min, max, len)),
                _ => None,
            };
            res.iter().filter_map(of_kind).collect()
        };
        let window = |(start, size): (u64, u64)| (start, start + size - 1, size);
        assert_eq!(spaces(0), vec![window(m32), window(m64)], "memory: {res:?}");
        assert_eq!(spaces(2), vec![(0, 0, 1)], "bus numbers 0..=0: {res:?}");
        // Configuration mechanism #1: eight ports at 0xcf8, kept out of
        // the I/O windows handed to devices.
        let cfg = Res::Io {
            min: 0xcf8,
            max: 0xcf8,
            len: 8,
        };
        assert!(res.contains(&cfg), "config ports: {res:?}");
        let io = spaces(1);
        assert!(!io.is_empty(), "i/o windows: {res:?}");
        for (min, max, len) in io {
            assert_eq!(max - min + 1, len);
            assert!(
                max < 0xcf8 || min > 0xcff,
                "{min:#x}..={max:#x} overlaps 0xcf8"
            );
        }
    }
}

#[test]
fn dsdt_serial_crs_and_s5_decode() {
    let objs = named_objects(&dsdt_aml(windows())).expect("the dsdt decodes to its end");
    // The PC's COM1, where Linux's 8250 driver looks for it.
    let com1 = crs(&objs, "\\_SB_.COM1._CRS");
    let io = Res::Io {
        min: 0x3f8,
        max: 0x3f8,
        len: 8,
    };
    assert_eq!(com1.len(), 2, "{com1:?}");
    assert!(
        com1.contains(&io) && com1.contains(&Res::Irq(vec![4])),
        "{com1:?}"
    );
    // The guest writes SLP_TYP from `_S5_[0]` to power off.
    let Obj::Package(s5) = lookup(&objs, "\\_S5_") else {
        panic!("_S5_ is not a package");
    };
    assert_eq!(s5.first(), Some(&Obj::Int(5)), "{s5:?}");
    let names: Vec<&str> = objs.iter().map(|(n, _)| n.as_str()).collect();
    for n in ["\\_SB_.PCI0._HID", "\\_SB_.PCI0._SEG", "\\_SB_.COM1._HID"] {
        assert!(names.contains(&n), "no {n} in {names:?}");
    }
}

#[test]
fn aml_decoder_rejects_truncated_input() {
    let dsdt = dsdt_aml(windows());
    let objs = named_objects(&dsdt).expect("the dsdt decodes to its end");
    let Obj::Buffer(pci_crs) = lookup(&objs, "\\_SB_.PCI0._CRS") else {
        panic!("_CRS is not a buffer");
    };
    for n in 0..pci_crs.len() {
        assert_eq!(resources(&pci_crs[..n]), None, "crs cut at {n}");
    }
    // Three terms, `Scope (\_SB_)`, `Name (_S5_)` and the GED's
    // `Scope (\_SB_)`: only a cut between two of them leaves whole terms.
    let s5 = dsdt.windows(4).rposition(|w| w == b"_S5_").unwrap() - 1;
    let ged = dsdt.len() - ged_aml().len();
    for n in 1..dsdt.len() {
        let whole = named_objects(&dsdt[..n]).is_some();
        assert_eq!(whole, n == s5 || n == ged, "dsdt cut at {n}");
    }
}

#[test]
fn ged_notifies_the_power_button() {
    let objs = named_objects(&dsdt_aml(windows())).expect("the dsdt decodes to its end");
    assert_eq!(
        *lookup(&objs, "\\_SB_.GED_._HID"),
        Obj::Str("ACPI0013".into())
    );
    // Interrupts only: Linux's acpi-ged refuses a _CRS with anything else.
    let ged_crs = crs(&objs, "\\_SB_.GED_._CRS");
    assert_eq!(ged_crs, vec![Res::Irq(vec![layout::ACPI_GED_IRQ])]);
    let region = lookup(&objs, "\\_SB_.GED_.GDST");
    assert_eq!(
        *region,
        Obj::Region(0, layout::ACPI_GED_START.0, 1),
        "system memory, one byte"
    );
    assert!(objs
        .iter()
        .any(|(n, o)| n == "\\_SB_.GED_.GDST" && *o == Obj::Field(vec![("GDAT".into(), 8)])));
    let Obj::Method(flags, body) = lookup(&objs, "\\_SB_.GED_._EVT") else {
        panic!("_EVT is not a method");
    };
    assert_eq!(flags & 7, 1, "one argument");
    // Store(GDAT, Local0); If(And(Local0, bit)) { Notify(\_SB_.PWRB, 0x80) }
    let has = |n: &[u8]| body.windows(n.len()).any(|w| w == n);
    assert!(has(&[0x70]) && has(b"GDAT") && has(&[0x60]), "{body:02x?}");
    assert!(
        has(&[0x7b, 0x60, 0x0a, crate::devices::ged::EVENT_POWER_BUTTON]),
        "{body:02x?}"
    );
    assert!(has(b"\\_SB_PWRB") || has(b"_SB_PWRB"), "{body:02x?}");
    assert!(has(&[0x0a, 0x80]), "notify value 0x80: {body:02x?}");
    // PNP0C0C as a compressed EISA id.
    assert_eq!(*lookup(&objs, "\\_SB_.PWRB._HID"), Obj::Int(0x0c0c_d041));
}
