# shellcheck shell=bash
# Helpers for building and booting a TCG "L1" host image, shared by
# tests/hil/run.sh and guest/run.sh (--nested). Source it from bash after
# setting HIL_WORK and defining die().
#
# An L1 image is a busybox-static initramfs with an /init script, kernel
# modules decompressed from the Debian kernel that setup.sh unpacks into
# $HIL_WORK/kernel, and dynamically linked programs (vflaunch, qemu) with the
# libraries they need.

# Set KDIR (unpacked kernel .deb), KV (its release) and MODDIR (its modules).
# Run setup.sh first.
hil_kernel() {
    KDIR=$HIL_WORK/kernel
    compgen -G "$KDIR/lib/modules/*/kernel" >/dev/null || die "no kernel in $KDIR (run tests/hil/setup.sh)"
    KV=$(basename "$(ls -d "$KDIR"/lib/modules/*)")
    MODDIR=$KDIR/lib/modules/$KV/kernel
}

# One L1 at a time: it is a TCG guest using a whole core for a minute. The
# lock is held on fd 9 until this shell (and whatever it started) exits.
hil_lock() {
    mkdir -p "$HIL_WORK"
    exec 9>"$HIL_WORK/run.lock"
    flock -n 9 || die "another L1 (tests/hil/run.sh or guest/run.sh --nested) holds $HIL_WORK/run.lock"
}

# Decompress module NAME (.ko.xz found anywhere in the tree) into $1/lib/modules/NAME.ko.
add_modules() {
    local root=$1 m f
    shift
    mkdir -p "$root/lib/modules"
    for m in "$@"; do
        f=$(find "$MODDIR" -name "$m.ko.xz" | head -n1)
        [ -n "$f" ] || die "module $m not found under $MODDIR"
        xz -dc "$f" >"$root/lib/modules/$m.ko"
    done
}

# Copy a dynamically linked ELF into the image's /bin (as $3 if given), plus
# the libraries ldd reports (and ld-linux), at the same paths.
add_elf() {
    local root=$1 elf=$2 lib
    install -D -m 755 "$elf" "$root/bin/${3:-$(basename "$elf")}"
    for lib in $(ldd "$elf" | grep -o '/[^ ]*' | sort -u); do
        # 755: the kernel refuses to exec an ELF interpreter (ld-linux) without x.
        install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    done
}

# A fresh root with busybox-static and the usual mount points; $2 becomes /init.
new_root() {
    rm -rf "$1"
    mkdir -p "$1"/{bin,dev,proc,sys,tmp}
    cp /bin/busybox "$1/bin/busybox"
    install -m 755 "$2" "$1/init"
}

mk_cpio() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$2"; }

# Single-quote a value for the busybox shell that sources a generated conf file.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
