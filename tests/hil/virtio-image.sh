# shellcheck shell=bash
# The "virtio" run's files in the Debian L1's image (see l1-virtio, l2-virtio).
#
# Sourced by run.sh (HIL_VMM=vflaunch) while it builds the Debian L1 image,
# after hil.conf is written and before the cpio is made. Uses run.sh's L1
# (the image root), HERE, HIL_WORK, runs and lib.sh's helpers. HIL_VIRTIO=0
# leaves the run out (here and in virtio-checks.sh).
#   L1: l1-virtio (sourced by l1-init for the run), Debian's tun module,
#       socat (hybrid vsock client + listener), mke2fs and debugfs (the disk
#       image), l2/l2-virtio.cpio; "virtio" appended to HIL_RUNS.
#   L2: l2-virtio.cpio = l2-init + l2-virtio (sourced by l2-init when the
#       cmdline has hil.virtio=...) + socat (VSOCK-LISTEN/-CONNECT), for the
#       project's guest kernel (virtio drivers built in, no modules).
[ "${HIL_VIRTIO:-1}" = 1 ] || return 0
L2V=$HIL_WORK/l2root-virtio
new_root "$L2V" "$HERE/l2-init"
install -m 644 "$HERE/l2-virtio" "$L2V/l2-virtio"
add_elf "$L2V" "$(command -v socat)"
mk_cpio "$L2V" "$HIL_WORK/l2-virtio.cpio"
cp "$HIL_WORK/l2-virtio.cpio" "$L1/l2/l2-virtio.cpio"
install -m 644 "$HERE/l1-virtio" "$L1/l1-virtio"
add_modules "$L1" tun
for t in socat mke2fs debugfs; do
    p=$(PATH=$PATH:/usr/sbin:/sbin command -v "$t") || die "$t not found (tests/hil/setup.sh installs socat and e2fsprogs)"
    add_elf "$L1" "$p"
done
# shellcheck disable=SC2016 # expanded by l1-init when it sources hil.conf
echo 'HIL_RUNS="$HIL_RUNS virtio"' >>"$L1/hil.conf"
runs="$runs virtio"
