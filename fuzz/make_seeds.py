#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/seed-*): a few inputs per
target that reach deep states (MSI-X on, BARs moved, valid documents), in
the op encoding of src/fuzzing/. Run from anywhere; the seeds are committed."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SIZE = {1: 0, 2: 1, 4: 2, 8: 3}


def ecam_read(off, n=4):
    return bytes([3, 0]) + struct.pack("<H", off) + bytes([SIZE[n]])


def ecam_write(off, data):
    return bytes([4, 0]) + struct.pack("<H", off) + bytes([SIZE[len(data)]]) + data


def trap_write(rng, off, data):
    return bytes([6, rng]) + struct.pack("<H", off) + bytes([SIZE[len(data)]]) + data


def trap_read(rng, off, n):
    return bytes([5, rng]) + struct.pack("<H", off) + bytes([SIZE[n]])


def sizing(reg):
    return bytes([7, reg])


def cf8(reg):
    return bytes([0, 0, reg])


def cfc_read(off, n):
    return bytes([1, SIZE[n], off])


def cfc_write(off, data):
    return bytes([2, off, SIZE[len(data)]]) + data


u16 = lambda v: struct.pack("<H", v)
u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)

msix_on = (
    trap_write(0, 0, u32(0xFEE00000))
    + trap_write(0, 8, u32(0x41))
    + trap_write(0, 12, u32(0))
    + trap_write(0, 16, u64(0xFEE01000))
    + trap_write(0, 24, u32(0x42))
    + trap_write(0, 28, u32(0))
    + ecam_write(0x72, u16(0x8000))
    + trap_write(0, 12, u64(0xFEE0300000000000))
    + trap_read(0, 0, 8)
    + trap_read(1, 0, 8)
)
enumerate_ = b"".join(ecam_read(o) for o in range(0, 0x40, 4)) + b"".join(
    sizing(i) for i in range(6)
)
move = (
    ecam_write(0x04, u16(0))
    + ecam_write(0x1C, u32(0xC0100000))
    + ecam_write(0x20, u32(0))
    + ecam_write(0x04, u16(2))
    + trap_write(0, 8, u32(0x4055))
    + ecam_write(0x10, u32(0x10000000))
    + ecam_write(0x04, u16(2))
)
msi_on = (
    ecam_write(0x44, u32(0xFEE02000))
    + ecam_write(0x48, u32(0))
    + ecam_write(0x4C, u16(0x4071))
    + ecam_write(0x42, u16(0x0081))
    + cf8(0x40)
    + cfc_read(2, 2)
    + cfc_write(2, u16(0x0080))
)
rom = ecam_write(0x30, u32(0xFFFFFFFF)) + ecam_read(0x30) + ecam_write(0x3C, u32(0xFFFF)) + ecam_read(0x100) + ecam_read(0x150)

# An igbvf-like configuration space for device_config: the first two bytes
# say how many config bytes follow.
cfg = bytearray(0x170)
struct.pack_into("<I", cfg, 0, 0x10CA8086)
struct.pack_into("<H", cfg, 6, 0x10)
cfg[0x0E] = 0x80
struct.pack_into("<I", cfg, 0x10, 0xC)
struct.pack_into("<I", cfg, 0x1C, 0xC)
struct.pack_into("<I", cfg, 0x30, 0xFFFE0001)
cfg[0x34] = 0x40
cfg[0x3D] = 1
cfg[0x40:0x44] = bytes([5, 0x70, 0x80, 0])
cfg[0x70:0x74] = bytes([0x11, 0xA0, 2, 0])
struct.pack_into("<I", cfg, 0x74, 3)
struct.pack_into("<I", cfg, 0x78, 0x2003)
cfg[0xA0:0xA4] = bytes([0x10, 0, 2, 0])
ext = lambda i, n: struct.pack("<I", i | (1 << 16) | (n << 20))
cfg[0x100:0x104] = ext(1, 0x150)
cfg[0x150:0x154] = ext(0xE, 0x160)
cfg[0x160:0x164] = ext(0xF, 0)
device = u16(len(cfg)) + bytes(cfg)

seeds = {
    "pci_bus": {"enumerate": enumerate_, "msix": msix_on, "move": move, "msi": msi_on, "rom": rom},
    "device_config": {"igbvf": device + msix_on + move, "empty": u16(0x40) + bytes(0x40)},
    "legacy": {
        "print": b"".join(bytes([1, 0, 0, c, 1]) for c in b"hello\n"),
        "regs": bytes([1, 3, 0, 0x80, 1, 1, 0, 0, 1, 1, 1, 3, 0, 3, 1, 0, 2, 2, 0, 5, 2]),
        "reset": bytes([7, 4, 0, 0xFE, 1]),
        "poweroff": bytes([9, 0, 0, 0x34, 1]),
    },
    "cli_values": {
        "size": b"\x00512M",
        "bdf": b"\x010000:03:02.1",
        "cmdline": b"\x02console=ttyS0 panic=-1 quiet",
        "argv": b"\x03run\n--kernel\nbzImage\n--memory\n1G\n--device\n0000:03:02.1,04:00.0\n--cpus\n2",
    },
    "config_json": {
        "full": b'{"kernel": "bzImage", "initramfs": "initrd.img", "cmdline": "console=ttyS0", "memory": "1G", "cpus": 2, "devices": ["0000:03:02.1"], "hugepages": false, "allow_unsafe_interrupts": false}',
        "mib": b'{"memory": 512}',
    },
    "intake_env": {
        "plugin": b'PCIDEVICE_INTEL_COM_SRIOV=0000:03:02.1,0000:03:04.3\nPCIDEVICE_INTEL_COM_SRIOV_INFO={"0000:03:02.1":{"vfio":{"mount":"/dev/vfio/42"}}}\nPCI_RESOURCE_NVIDIA_COM_GPU=0000:65:00.0',
        "info_list": b"PCIDEVICE_EXAMPLE_COM_INFO=0000:03:02.1",
    },
    "network_info": {
        "interfaces": b'{"interfaces":[{"network":"foo","deviceInfo":{"type":"pci","version":"1.0.0","pci":{"pci-address":"0000:65:00.2"}},"mac":"02:00:00:00:00:01"},{"network":"pod"},{"network":"vdpa","deviceInfo":{"type":"vdpa","vdpa":{"parent-device":"x"}}}]}',
        "map": b'{"net1":"0000:04:02.5","net2":"0000:04:02.6"}',
    },
}

for target, files in seeds.items():
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)
