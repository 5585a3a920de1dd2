//! Tiny guest kernels: a few bytes of x86 code in a minimal ELF64, enough to
//! print on COM1 and power off, reset or spin. Shared by the integration
//! tests and, through `#[path]`, by the VMM's own unit tests.

/// Where the tiny guests are loaded and entered (above the 1 MiB kernel floor).
pub const TINY_ENTRY: u64 = 0x20_0000;

/// 64-bit code: print `msg` on COM1, then power off through the ACPI sleep
/// control register (SLP_TYP=5, SLP_EN), then halt forever.
pub fn tiny_poweroff_code(msg: &[u8], pm_value: u8) -> Vec<u8> {
    tiny_out_code(msg, 0x600, pm_value)
}

/// 64-bit code: print `msg` on COM1, then write `value` to I/O `port`, then
/// halt forever.
pub fn tiny_out_code(msg: &[u8], port: u16, value: u8) -> Vec<u8> {
    let [port_lo, port_hi] = port.to_le_bytes();
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend_from_slice(&[0x48, 0x8d, 0x35]); // lea rsi, [rip + msg]
    c.extend_from_slice(&(32i32 - 11).to_le_bytes());
    c.push(0xb9); // mov ecx, len
    c.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0xac, 0xee]); // loop: lodsb; out dx, al
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfa]); // dec ecx; jnz loop
    c.extend_from_slice(&[0x66, 0xba, port_lo, port_hi]); // mov dx, port
    c.extend_from_slice(&[0xb0, value, 0xee]); // mov al, value; out dx, al
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    assert_eq!(c.len(), 32);
    c.extend_from_slice(msg);
    c
}

/// 64-bit code: print `msg` on COM1, then spin forever (the VMM must be
/// stopped from outside).
pub fn tiny_spin_code(msg: &[u8]) -> Vec<u8> {
    let mut c = tiny_poweroff_code(msg, 0);
    // Replace "mov dx, 0x600; mov al, 0; out dx, al" with a tight loop.
    c[22..29].copy_from_slice(&[0xeb, 0xfe, 0x90, 0x90, 0x90, 0x90, 0x90]);
    c
}

/// 64-bit code: write `byte` to COM1 for ever, as fast as the VMM takes it
/// (a guest flooding its console).
pub fn tiny_flood_code(byte: u8) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend_from_slice(&[0xb0, byte]); // mov al, byte
    c.extend_from_slice(&[0xee, 0xeb, 0xfd]); // loop: out dx, al; jmp loop
    c
}

/// 32-bit code for the PVH entry: check that EBX points at the PVH start
/// info (magic 0x336ec578), print `msg`, power off; on a bad magic, reset.
pub fn tiny_pvh_code(msg: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33]); // cmp dword [ebx], magic
    c.extend_from_slice(&[0x75, 0x1d]); // jne fail
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.push(0xbe); // mov esi, msg
    c.extend_from_slice(&((TINY_ENTRY + 48) as u32).to_le_bytes());
    c.push(0xb9); // mov ecx, len
    c.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0xac, 0xee, 0x49, 0x75, 0xfb]); // lodsb; out; dec ecx; jnz
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd]); // S5
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]); // fail: reset
    c.push(0x90);
    assert_eq!(c.len(), 48);
    c.extend_from_slice(msg);
    c
}

/// Wraps `code` in a minimal ELF64 executable loaded and entered at
/// `TINY_ENTRY`; with `pvh`, adds the Xen PHYS32_ENTRY note so it boots via PVH.
pub fn elf64(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let code_off = 64 + 56 * u64::from(phnum);
    let note_off = code_off + code.len() as u64;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
    note.extend_from_slice(&8u32.to_le_bytes()); // n_descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&TINY_ENTRY.to_le_bytes());

    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&TINY_ENTRY.to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e.extend_from_slice(&phnum.to_le_bytes()); // e_phnum
    e.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let mut phdr = |typ: u32, off: u64, addr: u64, len: u64| {
        e.extend_from_slice(&typ.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes()); // R+X
        e.extend_from_slice(&off.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        e.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        e.extend_from_slice(&len.to_le_bytes()); // p_filesz
        e.extend_from_slice(&len.to_le_bytes()); // p_memsz
        e.extend_from_slice(&4u64.to_le_bytes()); // p_align
    };
    phdr(1, code_off, TINY_ENTRY, code.len() as u64); // PT_LOAD
    if pvh {
        phdr(4, note_off, 0, note.len() as u64); // PT_NOTE
    }
    assert_eq!(e.len() as u64, code_off);
    e.extend_from_slice(code);
    if pvh {
        e.extend_from_slice(&note);
    }
    e
}

/// 32-bit code for the PVH entry that behaves like a guest with an ACPI
/// power button handler: print `msg`, then poll the byte at `event_reg` (the
/// GED event register, which the VMM sets on a power-button press) until
/// `mask` is set in it, then power off through ACPI S5.
pub fn tiny_pvh_power_button_code(msg: &[u8], event_reg: u32, mask: u8) -> Vec<u8> {
    const MSG_AT: u64 = 40;
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.push(0xbe); // mov esi, msg
    c.extend_from_slice(&((TINY_ENTRY + MSG_AT) as u32).to_le_bytes());
    c.push(0xb9); // mov ecx, len
    c.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0xac, 0xee, 0x49, 0x75, 0xfb]); // lodsb; out; dec ecx; jnz
    c.push(0xa0); // poll: mov al, [event_reg]
    c.extend_from_slice(&event_reg.to_le_bytes());
    c.extend_from_slice(&[0xa8, mask]); // test al, mask
    c.extend_from_slice(&[0x74, 0xf7]); // jz poll
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee]); // S5
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c.resize(MSG_AT as usize, 0x90);
    c.extend_from_slice(msg);
    c
}

/// 64-bit code: run CPUID for each `(leaf, register)` (register 0..=3 =
/// EAX, EBX, ECX, EDX; subleaf 0) and write the register's 4 bytes, little
/// endian, to COM1; then power off with `pm_value` as `tiny_poweroff_code`.
pub fn tiny_cpuid_code(queries: &[(u32, u8)], pm_value: u8) -> Vec<u8> {
    let mut c = Vec::new();
    for &(leaf, reg) in queries {
        c.push(0xb8); // mov eax, leaf
        c.extend_from_slice(&leaf.to_le_bytes());
        c.extend_from_slice(&[0x31, 0xc9, 0x0f, 0xa2]); // xor ecx, ecx; cpuid
                                                        // mov esi, <reg> (esi survives the loop; cpuid clobbered edx)
        c.extend_from_slice(&[0x89, [0xc6, 0xde, 0xce, 0xd6][usize::from(reg & 3)]]);
        c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        c.extend_from_slice(&[0xb9, 4, 0, 0, 0]); // mov ecx, 4
                                                  // loop: mov eax, esi; out dx, al; shr esi, 8; dec ecx; jnz loop
        c.extend_from_slice(&[0x89, 0xf0, 0xee, 0xc1, 0xee, 0x08, 0xff, 0xc9, 0x75, 0xf6]);
    }
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06]); // mov dx, 0x600
    c.extend_from_slice(&[0xb0, pm_value, 0xee]); // mov al, value; out dx, al
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c
}
