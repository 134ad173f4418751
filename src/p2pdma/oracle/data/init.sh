#!/bin/busybox sh
# p2pdma oracle guest /init (busybox initramfs).
# Loads the oracle module, asks the kernel for its P2PDMA verdicts among all NVMe
# functions, captures the sysfs files the project's reader needs, writes all of it
# to the writable 9p share "out" and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /out /capture /host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /capture
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out; then
    echo "P2PDMA-ORACLE-FAIL cannot mount the 9p share 'out'"
    poweroff -f
fi
R=/out/results.txt
: > $R
dmesg > /out/boot-dmesg.txt
dmesg -c > /dev/null
if ! insmod /p2pdma_oracle.ko 2> /out/insmod.txt; then
    echo "P2PDMA-ORACLE-FAIL insmod: $(cat /out/insmod.txt)"
    dmesg > /out/insmod-dmesg.txt
    poweroff -f
fi
dmesg -c > /dev/null
D=/sys/kernel/debug/p2pdma_oracle

# query <file> <arguments>: one record in results.txt with the module's answer
# and every kernel message printed while answering.
query() {
    echo "@@ $1 $2" >> $R
    if ! echo "$2" > $D/$1 2>> $R; then
        echo "error write" >> $R
    fi
    cat $D/$1 >> $R
    echo "@@ dmesg" >> $R
    dmesg -c >> $R
    echo "@@ end" >> $R
}

NVME=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/class)" = "0x010802" ]; then NVME="$NVME ${d##*/}"; fi
done
echo "nvme$NVME" > /out/nvme.txt

# every ordered (provider, client) pair, verbose
for p in $NVME; do
    for c in $NVME; do query distance "1 $p $c"; done
done
# client sets: every 2-subset and the whole set, against every provider
SETS=""
i=0
for a in $NVME; do
    i=$((i + 1)); j=0
    for b in $NVME; do
        j=$((j + 1))
        if [ $j -gt $i ]; then SETS="$SETS $a,$b"; fi
    done
done
set -- $NVME
if [ $# -gt 2 ]; then SETS="$SETS $(echo $NVME | tr ' ' ',')"; fi
for p in $NVME; do
    for s in $SETS; do query distance "1 $p $(echo $s | tr ',' ' ')"; done
done
# find_many: each single client, each 2-subset, the whole set
for s in $NVME $SETS; do query find "48 $(echo $s | tr ',' ' ')"; done
echo "@@ done" >> $R

# capture the sysfs files a reader needs (small: no binary BAR files)
C=/capture/root
mkdir -p $C/sys/bus/pci/devices $C/sys/bus/pci/drivers $C/proc/sys/kernel $C/sys/kernel/iommu_groups
for f in cmdline cpuinfo version iomem; do cat /proc/$f > $C/proc/$f; done
cat /proc/sys/kernel/osrelease > $C/proc/sys/kernel/osrelease
for drv in /sys/bus/pci/drivers/*; do
    for l in $drv/0000:*; do [ -L $l ] && mkdir -p $C$drv && break; done
done
for d in /sys/bus/pci/devices/*; do
    real=$(readlink -f $d)
    mkdir -p $C$real
    ln -s "$(readlink $d)" $C$d
    for a in vendor device class subsystem_vendor subsystem_device revision config resource \
             numa_node local_cpulist current_link_speed current_link_width max_link_speed \
             max_link_width ari_enabled secondary_bus_number subordinate_bus_number; do
        if [ -f $d/$a ]; then cat $d/$a > $C$real/$a 2>/dev/null; fi
    done
    for l in driver iommu_group physfn firmware_node; do
        if [ -L $d/$l ]; then ln -s "$(readlink $d/$l)" $C$real/$l; fi
    done
    if [ -d $d/p2pmem ]; then
        mkdir -p $C$real/p2pmem
        for a in size available published; do cat $d/p2pmem/$a > $C$real/p2pmem/$a; done
    fi
    if [ -d $d/nvme ]; then
        for n in $d/nvme/*; do
            mkdir -p $C$real/nvme/${n##*/}
            for a in cmb cmbloc cmbsz model serial transport; do
                if [ -f $n/$a ]; then cat $n/$a > $C$real/nvme/${n##*/}/$a 2>/dev/null; fi
            done
        done
    fi
    hb=${real%%/0000:*}
    mkdir -p $C$hb
done
for g in /sys/kernel/iommu_groups/*; do
    [ -d $g ] || continue
    mkdir -p $C$g/devices
    for l in $g/devices/*; do ln -s "$(readlink $l)" $C$l; done
    [ -f $g/type ] && cat $g/type > $C$g/type
done
if [ -d /sys/class/iommu ]; then
    mkdir -p $C/sys/class/iommu
    for i in /sys/class/iommu/*; do [ -L $i ] && ln -s "$(readlink $i)" $C$i; done
fi
tar -C $C -cf /out/sysfs.tar .

# optional: the host's commands, chrooted into the host's / (shared read-only)
if [ -f /out/commands.sh ]; then
    H=/host
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host $H; then
        mount -t proc proc $H/proc
        mount -t sysfs sysfs $H/sys
        mount -t debugfs debugfs $H/sys/kernel/debug
        mount -t devtmpfs devtmpfs $H/dev
        # Scratch space on /run, not /tmp: a checkout (and its venv) may live under
        # the host's /tmp, and a tmpfs there would hide it from the chroot.
        mount -t tmpfs tmpfs $H/run
        mount --bind /out $H/mnt
        chroot $H /bin/sh /mnt/commands.sh > /out/commands.out 2>&1
        echo "rc $?" >> /out/commands.out
        umount $H/mnt
    else
        echo "rc mount-failed" > /out/commands.out
    fi
fi
dmesg > /out/final-dmesg.txt
sync
echo "P2PDMA-ORACLE-DONE"
umount /out
poweroff -f
