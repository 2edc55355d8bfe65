#!/bin/sh
# A throwaway one-node Ceph RGW on loopback (monitor, memstore OSD, radosgw) for trying the
# origin on S3 by hand: the recipe itself is deploy/rgw.py (tests and make run-s3 use it too).
#   needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
#   up:    eval "$(deploy/rgw-up.sh DIR [--port N] [--mon-port N])"   # exports AWS_* for boto3
#   down:  python3 deploy/rgw.py down DIR                              # stops it by PID
set -eu
for cmd in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
    command -v "$cmd" >/dev/null || {
        echo "rgw-up.sh: $cmd is missing; apt-get install ceph-mon ceph-osd radosgw ceph-common" >&2
        exit 1
    }
done
[ $# -ge 1 ] || { echo "usage: $0 DIR [--port N] [--mon-port N]" >&2; exit 2; }
exec "${PYTHON:-python3}" "$(dirname "$0")/rgw.py" up "$@"
