#!/bin/busybox sh
# PID 1 of the lbdoctor test guest. Mounts what a test needs, loads the
# netfilter/IPVS modules, runs /lbdoctor-run/run.sh (added per run) with its
# output on ttyS1, reports the exit status on the console and powers off.
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /var && ln -sf /run /var/run
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# IPVS refuses IPv4 real servers in a netns whose lo is down.
ip link set lo up
failed=""
for m in $(cat /etc/lbdoctor/modules); do
	modprobe "$m" 2>/dev/console || failed="$failed $m"
done
[ -n "$failed" ] && echo "lbdoctor-guest: modules failed to load:$failed" >/dev/console
stty -F /dev/ttyS1 raw -echo 2>/dev/null
if [ -x /lbdoctor-run/run.sh ]; then
	/lbdoctor-run/run.sh </dev/null >/dev/ttyS1 2>&1
	rc=$?
else
	echo "lbdoctor-guest: nothing to run" >/dev/ttyS1
	rc=125
fi
echo "LBDOCTOR-GUEST-EXIT=$rc" >/dev/console
sync
poweroff -f
