#!/bin/bash
# The naive way to test one cell, the baseline benchmarks/bench.py measures hvgate against:
# `docker build --no-cache` of its Dockerfile (no shared package cache), then the smoke
# scenarios as a shell script with virsh in a container of the image. Prints one line per step:
#   STEP SECONDS
# usage: naive.sh BUILD_DIR TAG GUEST_TAR
set -euo pipefail
build_dir=$1 tag=$2 guest_tar=$3
label=io.hvgate.run=bench-naive-$$

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

start=$(now)
docker build -q --no-cache -t "$tag" "$build_dir" >/dev/null
echo "build $(since "$start")"

start=$(now)
container=$(docker run -d --init --label "$label" "$tag" sleep infinity)
trap 'docker rm -f "$container" >/dev/null' EXIT
docker cp - "$container:/opt" <"$guest_tar" >/dev/null
docker exec -i "$container" timeout 900 bash -s <<'SCRIPT'
set -euo pipefail
dom=hvgate-guest work=/var/lib/naive guest=/opt/guest
mkdir -p "$work" /var/log/libvirt/qemu && cd "$work"
# Waits up to 5 minutes for the console to match (a count of) a pattern.
wait_for() {
    for _ in $(seq 1500); do
        [ "$(grep -c "$1" console.log 2>/dev/null || true)" -ge "${2:-1}" ] && return 0
        sleep 0.2
    done
    echo "timed out waiting for $1" >&2
    return 1
}
virtlogd -d
if command -v libvirtd >/dev/null; then libvirtd -d; else virtqemud -d; fi
until virsh -q version >/dev/null 2>&1; do sleep 0.2; done
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 disk.qcow2
qemu-img create -q -f qcow2 extra.qcow2 16M
cat >dom.xml <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$guest/vmlinuz</kernel>
    <initrd>$guest/initramfs.img</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='$work/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='$work/console.log' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
echo "naive: boot" >&2
virsh -q define dom.xml >/dev/null
virsh -q start "$dom" >/dev/null
wait_for HVGATE-READY 1
echo "naive: reboot" >&2
virsh -q reset "$dom" >/dev/null
wait_for HVGATE-READY 2
echo "naive: pause-resume" >&2
virsh -q suspend "$dom" >/dev/null
sleep 1.3  # as long as hvgate watches a paused guest
virsh -q resume "$dom" >/dev/null
echo "naive: live-snapshot" >&2
qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 copy.qcow2
virsh -q dumpxml --inactive "$dom" >persistent.xml
virsh -q undefine "$dom" >/dev/null
virsh -q blockcopy "$dom" vda "$work/copy.qcow2" --shallow --reuse-external --wait --finish >/dev/null
virsh -q define persistent.xml >/dev/null
echo "naive: external-snapshot" >&2
virsh -q snapshot-create-as "$dom" snap1 --disk-only --atomic --no-metadata \
    --diskspec "vda,file=$work/snap1.qcow2" >/dev/null
echo "naive: managed-save" >&2
virsh -q managedsave "$dom" >/dev/null
virsh -q start "$dom" >/dev/null
echo "naive: disk-hotplug" >&2
virsh -q attach-disk "$dom" "$work/extra.qcow2" vdb --subdriver qcow2 --live >/dev/null
wait_for "HVGATE-DISK-ADDED vdb"
virsh -q detach-disk "$dom" vdb --live >/dev/null
wait_for "HVGATE-DISK-REMOVED vdb"
echo "naive: teardown" >&2
virsh -q destroy "$dom" >/dev/null
virsh -q undefine "$dom" --managed-save --snapshots-metadata >/dev/null
SCRIPT
echo "scenarios $(since "$start")"
