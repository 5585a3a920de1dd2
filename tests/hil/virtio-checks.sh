# shellcheck shell=bash
# Verdict lines for the "virtio" run of the Debian L1 (l1-virtio, l2-virtio),
# sourced by run.sh (HIL_VMM=vflaunch) after the builtin run's checks, with
# its check/count/segment/builtin_checks/igb_checks helpers, LOG and failed.
# One L2 boot: both igb VFs leased and pinged, plus rng, blk, vsock and net.
[ "${HIL_VIRTIO:-1}" = 1 ] || return 0
VSEG=$(segment "$LOG" virtio)
# The first boot (vflaunch run ...) up to the Kata sequence's second boot.
F=$HIL_WORK/logs/run-virtio-run.log
sed '/L1: virtio-kata: start/q' "$VSEG" >"$F"
builtin_checks virtio
check "virtio: L2 brought up both vCPUs" 'L2: 2 cpu\(s\) online'
igb_checks virtio
check "virtio: rng: L2 read 32 bytes from /dev/hwrng (virtio_rng)" 'L2: hwrng virtio_rng\.[0-9]+ 32 bytes'
check "virtio: blk: /dev/vda's serial is the disk's id" 'L2: vda serial hil-disk size 64 MiB ro=0'
check "virtio: blk: L2 mounted L1's ext4 image (mke2fs -d) and read its seed file" 'L2: vda seed file: made in L1'
check "virtio: blk: L2 wrote 8 MiB of random data, synced and unmounted" 'L2: vda synced and unmounted'
vhash() { sed -n -E "s/.*$1 ([0-9a-f]{64}).*/\\1/p" "$F" | head -n1; }
h_l2=$(vhash 'L2: vda random\.bin sha256')
h_rb=$(vhash 'L2: vda read back after remount sha256')
h_l1=$(vhash 'L1: virtio: image random\.bin sha256')
if [ -n "$h_l2" ] && [ "$h_l2" = "$h_rb" ] && [ "$h_l2" = "$h_l1" ] && grep -q -E 'L1: virtio: image random\.bin sha256 [0-9a-f]+ \(8388608 bytes\)' "$F"; then
    say "ok:   virtio: blk: the 8 MiB file in the image (debugfs dump after the exit) has L2's sha256, also read back in L2 after a remount ($h_l2)"
else
    say "FAIL: virtio: blk: sha256 of random.bin: L2 wrote '${h_l2:-none}', L2 read back '${h_rb:-none}', L1's image has '${h_l1:-none}'"
    # shellcheck disable=SC2034 # run.sh's verdict
    failed=1
fi
check "virtio: blk: the image's seed file is intact" 'L1: virtio: image seed.txt: made in L1$'
check "virtio: net: the netdev with the given MAC is virtio_net" 'L2: virtio-net: [a-z0-9]+ mac 52:54:00:77:00:02 driver virtio_net'
check "virtio: net: L2 pinged L1's tap 10.77.0.1 over virtio-net: 3 received, 0% loss" 'L2: virtio-net ping: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
check "virtio: net: the tap vflaunch created went away with it" 'L1: virtio: tap vfltap0 gone after the exit$'
check "virtio: vsock: L2's connection to host port 5000 reached the listener on PATH_5000" "L1: virtio: host port 5000 listener got: 'hello from L2 over vsock'$"
check "virtio: vsock: CONNECT 1024 answered 'OK 1073741824'" "L1: virtio: vsock echo first line: 'OK 1073741824'$"
check "virtio: vsock: 16 MiB of random data echoed by L2 came back byte for byte" 'L1: virtio: vsock echo: the 16777216 bytes after it are the ones sent \(cmp\)$'
check "virtio: vsock: L2 received L1's last line on port 1025" 'L2: vsock L1 said on port 1025: L1 is done \(echo ok\)'
check "virtio: vsock: the socket file is removed at exit" 'L1: virtio: /tmp/vm.vsock removed at exit$'
absent "virtio: no virtio errors in L1 or L2" 'L[12]: virtio: ERROR'
VRUN=$F

# The second boot: Kata's call sequence over the API socket.
F=$HIL_WORK/logs/run-virtio-kata.log
sed -n '/L1: virtio-kata: start/,$p' "$VSEG" >"$F"
check "virtio-kata: vmm.ping answers" 'L1: virtio-kata: GET vmm.ping -> rc=0 '
check "virtio-kata: vm.create with devices (both VFs), disks, vsock and rng accepted" 'L1: virtio-kata: PUT vm.create -> rc=0 '
check "virtio-kata: vm.add-net with a tap fd sent as SCM_RIGHTS (vflaunch api --tap)" 'L1: virtio-kata: --tap vfltap1 PUT vm.add-net -> rc=0 '
check "virtio-kata: vm.boot" 'L1: virtio-kata: PUT vm.boot -> rc=0 '
count "virtio-kata: L2 bound igbvf to each VF" 2 'L2: VF driver igbvf bound to [0-9a-f:.]+'
count "virtio-kata: each VF got a DHCP lease" 2 'L2: udhcpc: lease of [0-9.]+ obtained'
count "virtio-kata: each VF pinged 10.0.2.2: 3 received, 0% loss" 2 'L2: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
check "virtio-kata: L2 sees rng and the read-only disk with its id" 'L2: virtio-kata: hwrng virtio_rng\.[0-9]+, vda serial kata-image ro=1'
check "virtio-kata: L2 pinged the tap whose fd came with vm.add-net: 3 received, 0% loss" 'L2: virtio-net ping: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
check "virtio-kata: hybrid vsock CONNECT 1024 reached L2's listener (OK, then the echo)" "L1: virtio-kata: CONNECT 1024: 'OK [0-9]+' then 'hello agent'$"
check "virtio-kata: vm.info says Running" 'L1: virtio-kata: vm.info: "state": *"Running"'
check "virtio-kata: vm.shutdown" 'L1: virtio-kata: PUT vm.shutdown -> rc=0 '
check "virtio-kata: vm.info after vm.shutdown says Shutdown" 'L1: virtio-kata: vm.info after vm.shutdown: "state": *"Shutdown"'
check "virtio-kata: vmm.shutdown, vflaunch exited with 0" 'L1: virtio-kata: VFLAUNCH_EXIT=0 '
count "virtio-kata: API socket, vsock socket and tap gone after the exit" 3 'L1: virtio-kata: [^ ]+ gone after the exit$'
F=$VRUN
grep -E 'L1: virtio: vsock echo: socat|L2: vda (random|read back)|L1: virtio: image random' "$F" | sed 's/^.*L\([12]\)/[hil]   L\1/' || true
