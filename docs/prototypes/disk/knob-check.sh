#!/bin/bash
# knob-check.sh ROOTDIR — negative controls: for each reproducibility knob, build a
# small artifact twice (2.1 s apart (FAT times have 2 s resolution), from two copies of the input made at
# different times) with and without the knob, and report SAME/DIFF.
set -u
R=$(realpath "$1"); T=$(mktemp -d); cd "$T"
export MTOOLSRC=/dev/null SDE=1795140670
U=11111111-2222-4333-8444-555555555555
res() { if cmp -s "$2" "$3"; then echo "SAME  $1"; else echo "DIFF  $1 (first diff at byte $(cmp "$2" "$3" | awk '{print $5}' | tr -d ,))"; fi; }
twice() { # twice NAME CMD... ; CMD gets the output file as $OUT, input dir as $IN
  local n=$1; shift
  IN=in1 OUT=$n.1 bash -c "$*" >/dev/null 2>&1; sleep 2.1
  IN=in2 OUT=$n.2 bash -c "$*" >/dev/null 2>&1
  res "$n" $n.1 $n.2
}
mkdir in1; for i in $(seq 1 50); do echo $i > in1/f$i; done; mkdir in1/d; echo x > in1/d/y
touch -d @$SDE in1/* in1/d/y in1 ; sleep 2.1
mkdir in2; for i in $(seq 50 -1 1); do echo $i > in2/f$i; done; mkdir in2/d; echo x > in2/d/y
touch -d @$SDE in2/* in2/d/y in2
export SDE U R

echo "== sfdisk $(sfdisk --version | awk '{print $NF}')"
GPT='truncate -s 8M $OUT; printf "label: gpt\n%bstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B%s\n" "$A" "$B" | sfdisk -q --no-reread --no-tell-kernel $OUT'
A= B= twice gpt-no-ids "$GPT"
A="label-id: $U\n" B= twice gpt-label-id-only "$GPT"
A="label-id: $U\n" B=", uuid=$U" twice gpt-label-id+uuid "$GPT"
export A B

echo "== mkfs.fat $(dpkg-query -W -f='${Version}' dosfstools)"
twice fat-plain 'mkfs.vfat -C -F 32 -n ESP $OUT 40000'
twice fat-i 'mkfs.vfat -C -F 32 -n ESP -i 4b494c4e $OUT 40000'
twice fat-invariant+i 'mkfs.vfat -C -F 32 -n ESP --invariant -i 4b494c4e $OUT 40000'

echo "== mtools $(mtools --version | head -1 | awk '{print $NF}')"
MT='mkfs.vfat -C -F 32 -n ESP --invariant -i 4b494c4e $OUT 40000 && mmd -i $OUT ::/EFI && mcopy -i $OUT $M $IN/f1 ::/EFI/X.EFI'
M= twice mtools-no-SDE "$MT"
M=-m twice mtools-m-no-SDE "$MT"
M= twice mtools-SDE "SOURCE_DATE_EPOCH=$SDE; export SOURCE_DATE_EPOCH; $MT"

echo "== mke2fs (host) $(mke2fs -V 2>&1 | head -1)"
twice e2-host-U-hashseed-FAKETIME 'E2FSPROGS_FAKE_TIME=$SDE SOURCE_DATE_EPOCH=$SDE mke2fs -q -t ext4 -U $U -E hash_seed=$U,root_owner=0:0 -d $IN $OUT 16M'
E2="$R/lib64/ld-linux-x86-64.so.2 --library-path $R/usr/lib/x86_64-linux-gnu $R/usr/sbin/mke2fs"; export E2
echo "== mke2fs (image) $($E2 -V 2>&1 | head -1)"
twice e2-img-U-hashseed-noSDE 'MKE2FS_CONFIG=$R/etc/mke2fs.conf $E2 -q -t ext4 -U $U -E hash_seed=$U,root_owner=0:0 -d $IN $OUT 16M'
twice e2-img-U-SDE-no-hashseed 'MKE2FS_CONFIG=$R/etc/mke2fs.conf SOURCE_DATE_EPOCH=$SDE $E2 -q -t ext4 -U $U -E root_owner=0:0 -d $IN $OUT 16M'
twice e2-img-U-hashseed-FAKETIME-only 'MKE2FS_CONFIG=$R/etc/mke2fs.conf E2FSPROGS_FAKE_TIME=$SDE $E2 -q -t ext4 -U $U -E hash_seed=$U,root_owner=0:0 -d $IN $OUT 16M'
twice e2-img-U-hashseed-SDE 'MKE2FS_CONFIG=$R/etc/mke2fs.conf SOURCE_DATE_EPOCH=$SDE $E2 -q -t ext4 -U $U -E hash_seed=$U,root_owner=0:0 -d $IN $OUT 16M'
rm -rf "$T"
