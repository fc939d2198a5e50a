#!/bin/bash
# boot-test.sh — build a disk with a boot-marker unit, boot it under QEMU (TCG) + OVMF
# with a NoCloud seed, and wait for the marker on the serial console.
# usage: boot-test.sh ROOTFS.tar OUTDIR [extra build-disk.sh options...]
# env: TIMEOUT (s, default 900), GROW_MIB (extra MiB appended to the disk, default 1024),
#      NOSEED=1 (boot without the cidata seed)
set -euo pipefail
TAR=$(realpath "$1"); D=$(realpath -m "$2"); shift 2
TIMEOUT=${TIMEOUT:-900}; GROW_MIB=${GROW_MIB:-1024}
HERE=$(dirname "$(realpath "$0")")
mkdir -p "$D"; rm -rf "$D/overlay"

# ---- overlay: oneshot marker unit after multi-user.target (and cloud-final) ----
O=$D/overlay
mkdir -p "$O/etc/systemd/system/multi-user.target.wants" "$O/usr/local/sbin"
cat > "$O/usr/local/sbin/kiln-boot-report" <<'EOF'
#!/bin/sh
# The report is gathered into a file first and then written to the serial port
# by a child process (not the service's session leader, so the tty never becomes
# its controlling terminal), retried because agetty's vhangup() on ttyS0 can
# revoke an open descriptor while the getty starts.
R=/run/kiln-report
exec >$R 2>&1
echo "KILN-REPORT uptime: $(cut -d' ' -f1 /proc/uptime)s"
echo "KILN-REPORT cmdline: $(cat /proc/cmdline)"
echo "KILN-REPORT root: $(findmnt -no SOURCE,FSTYPE,OPTIONS,SIZE /)"
echo "KILN-REPORT usr: $(findmnt -no SOURCE,FSTYPE,OPTIONS /usr 2>/dev/null || echo 'not separate')"
echo "KILN-REPORT df /: $(df -h / | tail -1)"
lsblk -o NAME,SIZE,TYPE,PARTLABEL,FSTYPE,MOUNTPOINTS | sed 's/^/KILN-REPORT lsblk: /'
echo "KILN-REPORT mounts: $(findmnt -rno TARGET,SOURCE | grep -E '^/(efi|boot)' | tr '\n' ' ')"
echo "KILN-REPORT failed units: $(systemctl --failed --no-legend --plain | tr '\n' ';')"
echo "KILN-REPORT cloud-init: $(cloud-init status --long 2>&1 | tr '\n' ' ')"
echo "KILN-REPORT ds-identify: $(grep -E '^(DSLIST|DMI|FS_LABELS|MODE)' /run/cloud-init/ds-identify.log 2>/dev/null | tr '\n' ' ')"
echo "KILN-REPORT user kiln: $(id kiln 2>&1)"
echo "KILN-REPORT ssh host keys: $(ls /etc/ssh/ssh_host_*_key.pub 2>/dev/null | wc -l)"
echo "KILN-REPORT machine-id: $(cat /etc/machine-id)"
echo "KILN-REPORT growpart/growfs journal: $(journalctl -b -o cat -u cloud-init.service -u systemd-growfs-root.service 2>/dev/null | grep -iE 'grow|resiz' | head -5 | tr '\n' ' ')"
systemd-analyze blame 2>/dev/null | head -8 | sed 's/^/KILN-REPORT blame: /'
echo "KILN-REPORT growpart log: $(grep -hE 'growpart|resize2fs|Resized' /var/log/cloud-init.log 2>/dev/null | grep -vE 'Running module|start:|finish:|using lock' | cut -d' ' -f4- | tail -4 | tr '\n' ' ')"
echo "KILN-BOOT-OK"
for i in 1 2 3 4 5 6 7 8 9 10; do cat $R >/dev/ttyS0 && break; sleep 1; done
systemctl --no-block poweroff
EOF
chmod 0755 "$O/usr/local/sbin/kiln-boot-report"
cat > "$O/etc/systemd/system/kiln-boot-marker.service" <<'EOF'
[Unit]
Description=Kiln boot test marker
After=multi-user.target cloud-final.service getty.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kiln-boot-report

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../kiln-boot-marker.service "$O/etc/systemd/system/multi-user.target.wants/kiln-boot-marker.service"

# ---- the disk -------------------------------------------------------------------
"$HERE/build-disk.sh" --overlay "$O" "$@" "$TAR" "$D/disk.raw"

# ---- NoCloud seed: FAT labelled CIDATA, no mount ---------------------------------
cat > "$D/user-data" <<'EOF'
#cloud-config
users:
  - name: kiln
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEm9bmr1Yo9R8Qw3m2e9LwVxw6Ok0Jd8q3R2x7Z2k0aa kiln-test
growpart:
  mode: auto
  devices: ['/']
resize_rootfs: true
runcmd:
  - [sh, -c, 'echo "KILN-CLOUDINIT-RUNCMD $(id kiln) on $(hostname) at $(cut -d" " -f1 /proc/uptime)s" > /dev/ttyS0']
EOF
printf 'instance-id: kiln-boot-test-1\nlocal-hostname: kiln-test\n' > "$D/meta-data"
rm -f "$D/seed.img"
mkfs.vfat -C -n CIDATA --invariant "$D/seed.img" 2048 >/dev/null
MTOOLSRC=/dev/null mcopy -i "$D/seed.img" "$D/user-data" "$D/meta-data" ::/

# ---- run --------------------------------------------------------------------------
cp --sparse=always "$D/disk.raw" "$D/run.raw"
[ "$GROW_MIB" -gt 0 ] && truncate -s +"${GROW_MIB}M" "$D/run.raw"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$D/vars.fd"
SEEDARG=(-drive "file=$D/seed.img,format=raw,if=virtio,readonly=on")
[ -n "${NOSEED:-}" ] && SEEDARG=()
# QEMU 7.2 multi-threaded TCG occasionally oopses the guest kernel early
# ("Oops: int3" in code being live-patched, i.e. a cross-modifying-code race
# in the emulator).  Watch the console, stop a panicked guest at once and
# retry, up to TRIES times.
TRIES=${TRIES:-3}; SMP=${SMP:-2}
set +e
for try in $(seq 1 "$TRIES"); do
  start=$(date +%s.%N)
  : > "$D/serial.log"
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 1536 -smp "$SMP" -nographic \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$D/vars.fd" \
    -drive file="$D/run.raw",format=raw,if=virtio \
    "${SEEDARG[@]}" \
    -nic user,model=virtio-net-pci,restrict=on \
    -serial mon:stdio </dev/null > "$D/serial.log" 2>&1 &
  qpid=$!
  rc=
  while kill -0 $qpid 2>/dev/null; do
    sleep 2
    now=$(date +%s.%N)
    if grep -aq 'Kernel panic' "$D/serial.log"; then rc=panic; sleep 1; kill $qpid; break; fi
    if awk "BEGIN{exit !($now - $start > $TIMEOUT)}"; then rc=timeout; kill $qpid; break; fi
  done
  wait $qpid; qrc=$?
  end=$(date +%s.%N)
  echo "try $try: qemu exit $qrc${rc:+ ($rc)} after $(awk "BEGIN{printf \"%.1f\", $end - $start}") s (wall)"
  [ "$rc" = panic ] && { cp "$D/serial.log" "$D/serial.panic.$try.log"; cp /usr/share/OVMF/OVMF_VARS_4M.fd "$D/vars.fd"
    cp --sparse=always "$D/disk.raw" "$D/run.raw"; [ "$GROW_MIB" -gt 0 ] && truncate -s +"${GROW_MIB}M" "$D/run.raw"; continue; }
  break
done
set -e
tr -d '\r' < "$D/serial.log" | grep -aE 'KILN-|cloud-init|Reached target|EXT4-fs.*resiz|growpart' | grep -av 'Starting\|Finished' | tail -60 || true
if grep -aq 'KILN-BOOT-OK' "$D/serial.log"; then echo "BOOT TEST PASSED"; else echo "BOOT TEST FAILED"; tail -40 "$D/serial.log"; exit 1; fi
