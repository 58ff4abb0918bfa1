# Run by e2e.service in the systemd test guest (tools/systemd_e2e.py).
set -u
while read -r module args; do
    # shellcheck disable=SC2086 # module parameters are separate words
    /bin/busybox insmod "/modules/$module" $args || echo "guest: insmod $module failed"
done </modules.order
status=1
if /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt; then
    i=0
    while [ ! -e /dev/video0 ] && [ $i -lt 50 ]; do
        /bin/busybox sleep 0.1
        i=$((i + 1))
    done
    /bin/busybox sh /mnt/job.sh >/mnt/out/job.log 2>&1
    status=$?
    /bin/busybox sync
else
    echo "guest: cannot mount the host directory"
fi
echo "REIDCAM-GUEST-EXIT $status" >/dev/console
/bin/busybox sync
systemctl poweroff --force --force
