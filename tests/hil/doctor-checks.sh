# shellcheck shell=bash
# Verdict lines for tests/hil/l1-doctor, sourced by run.sh (HIL_VMM=vflaunch)
# after its check/count helpers are defined. HIL_IOMMU (on, nointremap, none)
# is the L1 variant, as in l1-doctor.
case "${HIL_IOMMU:-on}" in
nointremap)
    check "doctor: no interrupt remapping, the vIOMMU fix named" 'L1: doctor: FAILED +interrupt remapping: off: VFIO refuses devices.*; fix: .*-device intel-iommu,intremap=on'
    check "doctor: the IOMMU itself is fine" 'L1: doctor: ok +IOMMU active: dmar[0-9]+'
    check "doctor: exit 3" 'L1: doctor rc=3$'
    check "vflaunch check still refuses: no interrupt remapping" 'L1: check: FAILED +interrupt remapping'
    check "vflaunch run still refuses (exit 3)" '^\[hil +[0-9.]+s\] VFLAUNCH_EXIT=3$'
    return 0
    ;;
none)
    check "doctor: no DMAR/IVRS table, the vIOMMU fix named" 'L1: doctor: FAILED +firmware IOMMU table: no ACPI DMAR or IVRS table; fix: .*-device intel-iommu,intremap=on'
    check "doctor: no IOMMU groups" 'L1: doctor: FAILED +IOMMU active: no IOMMU groups'
    count "doctor: each VF without an IOMMU group" 2 'L1: doctor: FAILED +VF 0000:[0-9a-f:.]+ IOMMU group: none'
    check "doctor: exit 3" 'L1: doctor rc=3$'
    check "vflaunch run still refuses (exit 3)" '^\[hil +[0-9.]+s\] VFLAUNCH_EXIT=3$'
    return 0
    ;;
esac
check "doctor: nothing failed on the emulated host (exit 0)" 'L1: doctor rc=0$'
check "doctor: CPU virtualization (svm under TCG)" 'L1: doctor: ok +CPU virtualization: svm'
check "doctor: L1 is itself a VM: nested KVM noted" 'L1: doctor: ok +nested KVM: this host is itself a VM'
check "doctor: /dev/kvm usable" 'L1: doctor: ok +/dev/kvm: opens read-write'
check "doctor: ACPI DMAR from the emulated intel-iommu" 'L1: doctor: ok +firmware IOMMU table: ACPI DMAR'
check "doctor: IOMMU active with groups" 'L1: doctor: ok +IOMMU active: dmar[0-9]+, [0-9]+ IOMMU groups'
check "doctor: intel_iommu=on and iommu=pt on the command line" 'L1: doctor: ok +kernel command line: intel_iommu=on; iommu=pt'
check "doctor: interrupt remapping on" 'L1: doctor: ok +interrupt remapping: on'
check "doctor: vfio-pci present" 'L1: doctor: ok +kernel: vfio-pci: '
check "doctor: no-IOMMU mode off" 'L1: doctor: ok +VFIO no-IOMMU mode: off'
check "doctor: the igb PF with its 2 VFs" 'L1: doctor: ok +SR-IOV PF 0000:[0-9a-f:.]+: 8086:10c9, driver igb, netdev [a-z0-9]+: 2 of [0-9]+ VFs created'
count "doctor: both VFs on vfio-pci" 2 'L1: doctor: ok +VF 0000:[0-9a-f:.]+ driver: vfio-pci \(PF 0000:[0-9a-f:.]+ vf [01]\)'
count "doctor: both VFs alone in their IOMMU groups" 2 'L1: doctor: ok +VF 0000:[0-9a-f:.]+ IOMMU group: [0-9]+, alone \(isolated\)'
count "doctor: no admin MAC yet, with the ip link fix" 2 'L1: doctor: WARN +VF 0000:[0-9a-f:.]+ admin settings: [a-z0-9]+ vf [01]: mac 00:00:00:00:00:00.*; fix: ip link set [a-z0-9]+ vf [01] mac 02:'
check "doctor: after ip link set, VF0's MAC over rtnetlink" 'L1: doctor-mac: ok +VF 0000:[0-9a-f:.]+ admin settings: [a-z0-9]+ vf 0: mac 52:54:00:12:34:56'
check "doctor --json: one document, exit code 0" 'L1: doctor-json: [1-9][0-9]* checks, exit_code 0$'
check "unbind without a record: the kernel gave VF1 to igbvf" 'L1: bind-rt: after unbind \(not recorded\): driver=igbvf$'
check "doctor: VF1 on igbvf, the fix is vflaunch bind" 'L1: doctor-igbvf: WARN +VF 0000:[0-9a-f:.]+ driver: igbvf .*; fix: vflaunch bind 0000:'
check "bind: VF1 igbvf -> vfio-pci, igbvf recorded" 'L1: bind-rt: after bind: driver=vfio-pci state=\{"0000:[0-9a-f:.]+":"igbvf"\}'
# shellcheck disable=SC2016 # literal backquotes in the pattern
check "unbind: VF1 back to the recorded igbvf" 'L1: unbind: 0000:[0-9a-f:.]+: vfio-pci -> igbvf \(as before `vflaunch bind`\)'
check "bind again: VF1 on vfio-pci for L2" 'L1: bind-rt: after bind again: driver=vfio-pci$'
