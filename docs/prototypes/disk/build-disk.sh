#!/bin/bash
# build-disk.sh — Debian root filesystem tarball -> reproducible, bootable GPT
# disk image following the Discoverable Partitions Specification (UEFI only).
# Nothing is mounted except /proc and /dev inside a private mount namespace
# while ukify runs in the chroot.  No loop devices.
#
# usage: build-disk.sh [options] ROOTFS.tar OUT.raw
#   --overlay DIR       copy DIR over the root before the ext4 is made
#   --cmdline STR       kernel command line baked into the UKI
#                       (default: "root=PARTUUID=<root uuid> rw console=ttyS0")
#   --esp-mib N         ESP size in MiB (default 128)
#   --seed STR          seed for all derived UUIDs (default: basename of OUT)
#   --usr-verity        (experimental) /usr as a separate dm-verity protected
#                       partition pair; needs a systemd (dracut) initrd
#   --keep              keep the work directory
# env: SOURCE_DATE_EPOCH (default: manifest.json beside the tarball,
#      else the newest mtime in the tarball)
set -euo pipefail
export LC_ALL=C TZ=UTC

OVERLAY= CMDLINE= ESP_MIB=128 SEED= KEEP= USR_VERITY=
while [ $# -gt 2 ]; do
  case $1 in
    --overlay) OVERLAY=$(realpath "$2"); shift 2 ;;
    --cmdline) CMDLINE=$2; shift 2 ;;
    --esp-mib) ESP_MIB=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --usr-verity) USR_VERITY=1; shift ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 2 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
TAR=$(realpath "$1"); OUT=$(realpath -m "$2")
SEED=${SEED:-$(basename "$OUT" .raw)}
mkdir -p "$(dirname "$OUT")"

# ---- SOURCE_DATE_EPOCH ------------------------------------------------------
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  M=$(dirname "$TAR")/manifest.json
  if [ -f "$M" ]; then
    SOURCE_DATE_EPOCH=$(sed -n 's/.*"source-date-epoch": *\([0-9]*\).*/\1/p' "$M" | head -1)
  fi
  if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(tar --full-time -tvf "$TAR" | awk '{print $4" "$5}' | sort | tail -1 | xargs -I{} date -d "{} UTC" +%s)
  fi
fi
export SOURCE_DATE_EPOCH
echo "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH seed=$SEED"

# ---- deterministic identifiers ----------------------------------------------
# uuid ROLE -> RFC 4122 v4-shaped UUID from sha256(seed:role)
uuid() {
  local h; h=$(printf 'kiln-disk:%s:%s' "$SEED" "$1" | sha256sum | cut -c1-32)
  # version nibble 4, variant 10xx
  local v=$(( (0x${h:16:1} & 0x3) | 0x8 ))
  printf '%s-%s-4%s-%x%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" "$v" "${h:17:3}" "${h:20:12}"
}
DISK_UUID=$(uuid disk)
ESP_UUID=$(uuid esp)
ROOT_UUID=$(uuid root)          # GPT partition UUID
ROOTFS_UUID=$(uuid root-fs)     # ext4 filesystem UUID
HASH_SEED=$(uuid root-hash-seed)
FAT_ID=$(printf 'kiln-disk:%s:esp-fat' "$SEED" | sha256sum | cut -c1-8)
USR_UUID=$(uuid usr) USRV_UUID=$(uuid usr-verity)

TYPE_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
TYPE_ROOT=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709          # root, x86-64
TYPE_USR=8484680C-9521-48C6-9C11-B0720656F69E           # /usr, x86-64
TYPE_USRV=77FF5F63-E7B6-4633-ACF4-1565B864C0E6          # /usr verity, x86-64

W=$(mktemp -d "${WORKDIR:-${TMPDIR:-/tmp}}/kiln-disk.XXXXXX")
cleanup() { [ -n "$KEEP" ] && echo "work dir kept: $W" || rm -rf "$W"; }
trap cleanup EXIT
R=$W/root
mkdir "$R"

# ---- 1. unpack ----------------------------------------------------------------
tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$TAR" -C "$R"
[ -n "$OVERLAY" ] && cp -a --no-preserve=ownership "$OVERLAY"/. "$R"/

KVER=$(cd "$R/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -1)
echo "kernel $KVER"
[ -f "$R/boot/initrd.img-$KVER" ] || { echo "no initrd for $KVER in the root" >&2; exit 1; }

# ---- 2. optional /usr verity (split /usr off the root) -------------------------
if [ -n "$USR_VERITY" ]; then
  mkdir "$W/usr"
  mv "$R/usr" "$W/usr/usr" && mkdir "$R/usr" && touch -d "@$SOURCE_DATE_EPOCH" "$R/usr"
  # erofs of /usr: -T sets every inode time, -U the fs UUID, --all-root not needed (already root-owned)
  mkfs.erofs ${EROFS_OPTS:-} -T"$SOURCE_DATE_EPOCH" -U "$USR_UUID" "$W/usr.img" "$W/usr/usr" >/dev/null
  # pad to 4 KiB
  truncate -s %4096 "$W/usr.img"
  VOUT=$(veritysetup format "$W/usr.img" "$W/usrv.img" --salt="$(printf 'kiln-disk:%s:usr-salt' "$SEED" | sha256sum | cut -c1-64)" --uuid="$USRV_UUID")
  ROOTHASH=$(echo "$VOUT" | awk '/Root hash:/{print $3}')
  echo "usr roothash $ROOTHASH"
  # /usr partition UUID = first 128 bits of the root hash, verity partition = last 128 bits (DPS convention)
  USR_UUID=$(echo "$ROOTHASH" | cut -c1-32 | sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/')
  USRV_UUID=$(echo "$ROOTHASH" | cut -c33-64 | sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/')
  # ukify needs the root's /usr: run it from the split tree
  UKI_ROOT=$W/ukiroot; mkdir "$UKI_ROOT"
fi

# ---- 3. UKI, built by the image's own ukify in a chroot ----------------------
CMDLINE=${CMDLINE:-"root=PARTUUID=$ROOT_UUID rw console=ttyS0"}
[ -n "$USR_VERITY" ] && CMDLINE="$CMDLINE usrhash=$ROOTHASH"
echo "cmdline: $CMDLINE"
run_in_root() {  # run_in_root ROOT CMD...  (private mount ns; nothing leaks)
  local root=$1; shift
  unshare --mount --propagation private --fork -- sh -ec '
    r=$1; shift
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 \
      SOURCE_DATE_EPOCH='"$SOURCE_DATE_EPOCH"' LC_ALL=C.UTF-8 "$@"' sh "$root" "$@"
}
if [ -n "$USR_VERITY" ]; then
  # temporarily put /usr back with a bind mount inside the namespace
  unshare --mount --propagation private --fork -- sh -ec '
    R=$1 U=$2; mount --bind "$U" "$R/usr"
    mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"
    chroot "$R" env -i PATH=/usr/sbin:/usr/bin PYTHONDONTWRITEBYTECODE=1 SOURCE_DATE_EPOCH='"$SOURCE_DATE_EPOCH"' \
      ukify build --linux=/boot/vmlinuz-$3 --initrd=/boot/initrd.img-$3 --uname=$3 \
      --cmdline="$4" --os-release=@/etc/os-release --output=/tmp/uki.efi' sh "$R" "$W/usr/usr" "$KVER" "$CMDLINE"
else
  run_in_root "$R" ukify build --linux="/boot/vmlinuz-$KVER" --initrd="/boot/initrd.img-$KVER" \
    --uname="$KVER" --cmdline="$CMDLINE" --os-release=@/etc/os-release --output=/tmp/uki.efi
fi
mv "$R/tmp/uki.efi" "$W/uki.efi"
if [ -n "$USR_VERITY" ]; then cp "$W/usr/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$W/sdboot.efi"
else cp "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$W/sdboot.efi"; fi
touch -d "@$SOURCE_DATE_EPOCH" "$R/tmp"

# ---- 4. ESP (FAT32), no mount: mkfs.vfat + mtools --------------------------
export MTOOLSRC=/dev/null MTOOLS_SKIP_CHECK=1
mkfs.vfat -C -F 32 -n ESP --invariant -i "$FAT_ID" "$W/esp.img" $((ESP_MIB * 1024)) >/dev/null
mmd -i "$W/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/Linux ::/loader
mcopy -i "$W/esp.img" "$W/sdboot.efi" ::/EFI/BOOT/BOOTX64.EFI
UKI_NAME="debian-$KVER.efi"
mcopy -i "$W/esp.img" "$W/uki.efi" "::/EFI/Linux/$UKI_NAME"
printf 'timeout 0\n' > "$W/loader.conf"
mcopy -i "$W/esp.img" "$W/loader.conf" ::/loader/loader.conf

# ---- 5. root ext4 (mke2fs -d) ------------------------------------------------
# e2fsprogs >= 1.47.1 clamps every inode time (atime/ctime too) and the
# superblock times to SOURCE_DATE_EPOCH; older ones copy ctime/atime from
# the source tree.  Prefer the host's if new enough, else the image's own.
MKE2FS=(mke2fs); MKCONF=/etc/mke2fs.conf
hostver=$(mke2fs -V 2>&1 | awk 'NR==1{print $2}')
if [ "$(printf '%s\n1.47.1\n' "$hostver" | sort -V | head -1)" != 1.47.1 ]; then
  [ -n "$USR_VERITY" ] && TR=$W/usr/usr || TR=$R/usr
  MKE2FS=("$TR/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$TR/lib/x86_64-linux-gnu" "$TR/sbin/mke2fs")
  MKCONF=$R/etc/mke2fs.conf
  echo "host mke2fs $hostver < 1.47.1: using the image's $("${MKE2FS[@]}" -V 2>&1 | head -1)"
fi
# size: host-independent estimate from apparent sizes (4 KiB blocks) + 25% + 128 MiB
DATA=$(find "$R" -xdev -printf '%y %s\n' | awk '
  $1=="f"{b+=int(($2+4095)/4096)} $1=="d"{b+=1} $1=="l"&&$2>59{b+=1} END{print b*4096}')
ROOT_MIB=$(( (DATA * 5 / 4 / 1048576) + 128 ))
rm -f "$W/root.img"
MKE2FS_CONFIG=$MKCONF "${MKE2FS[@]}" -q -t ext4 -b 4096 -L root -U "$ROOTFS_UUID" \
  -E "hash_seed=$HASH_SEED,root_owner=0:0" -d "$R" "$W/root.img" "${ROOT_MIB}M"

# ---- 6. GPT on a plain file + dd ---------------------------------------------
MiB=1048576; ESP_START=1
# root goes last so that it can be grown into the free space of a bigger disk
NEXT=$((ESP_START + ESP_MIB))
if [ -n "$USR_VERITY" ]; then
  USR_MIB=$(( ($(stat -c %s "$W/usr.img") + MiB - 1) / MiB ))
  USRV_MIB=$(( ($(stat -c %s "$W/usrv.img") + MiB - 1) / MiB ))
  USR_START=$NEXT; USRV_START=$((USR_START + USR_MIB)); NEXT=$((USRV_START + USRV_MIB))
fi
ROOT_START=$NEXT; NEXT=$((ROOT_START + ROOT_MIB))
DISK_MIB=$((NEXT + 1))
rm -f "$OUT"; truncate -s $((DISK_MIB * MiB)) "$OUT"
{
  echo "label: gpt"
  echo "label-id: $DISK_UUID"
  echo "unit: sectors"
  echo "first-lba: 2048"
  echo "sector-size: 512"
  echo "start=$((ESP_START*2048)), size=$((ESP_MIB*2048)), type=$TYPE_ESP, uuid=$ESP_UUID, name=\"esp\""
  if [ -n "$USR_VERITY" ]; then
    # attribute 60 = read-only
    echo "start=$((USR_START*2048)), size=$((USR_MIB*2048)), type=$TYPE_USR, uuid=$USR_UUID, name=\"usr-x86-64\", attrs=\"GUID:60\""
    echo "start=$((USRV_START*2048)), size=$((USRV_MIB*2048)), type=$TYPE_USRV, uuid=$USRV_UUID, name=\"usr-x86-64-verity\", attrs=\"GUID:60\""
  fi
  # attribute 59 = GPT_FLAG_GROWFS (systemd-gpt-auto / systemd-growfs)
  echo "start=$((ROOT_START*2048)), size=$((ROOT_MIB*2048)), type=$TYPE_ROOT, uuid=$ROOT_UUID, name=\"root-x86-64\", attrs=\"GUID:59\""
} > "$W/gpt.sfdisk"
sfdisk --quiet --no-reread --no-tell-kernel "$OUT" < "$W/gpt.sfdisk"
dd if="$W/esp.img" of="$OUT" bs=1M seek=$ESP_START conv=notrunc,sparse status=none
dd if="$W/root.img" of="$OUT" bs=1M seek=$ROOT_START conv=notrunc,sparse status=none
if [ -n "$USR_VERITY" ]; then
  dd if="$W/usr.img" of="$OUT" bs=1M seek=$USR_START conv=notrunc,sparse status=none
  dd if="$W/usrv.img" of="$OUT" bs=1M seek=$USRV_START conv=notrunc,sparse status=none
fi
cp "$W/uki.efi" "${OUT%.raw}.uki.efi"
echo "wrote $OUT: $DISK_MIB MiB (ESP $ESP_MIB MiB, root $ROOT_MIB MiB${USR_VERITY:+, usr $USR_MIB MiB, usr-verity $USRV_MIB MiB}), $(du -k "$OUT" | cut -f1) KiB allocated"
sha256sum "$OUT"
