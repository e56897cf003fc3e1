#!/usr/bin/env bash
# Runs a command beside a private systemd-journald, for the journald test.
#
#   unshare --mount --propagation private journald-wrapper.sh OUT -- CMD...
#
# Inside the new mount namespace a tmpfs hides the host's /run, so the
# journald started here owns /run/systemd/journal/socket and keeps a volatile
# journal in /run/log/journal. CMD's pid goes to OUT/daemon.pid (the test
# stops it with SIGTERM); afterwards the journal is copied to OUT/journal for
# journalctl -D. A multi-threaded test harness cannot unshare itself, hence
# this script.
set -euo pipefail
out=$1
shift
[ "${1:-}" = "--" ] && shift

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journald.conf.d
cat > /run/systemd/journald.conf.d/test.conf <<'CONF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
CONF

/lib/systemd/systemd-journald &
journald=$!
for _ in $(seq 200); do
    [ -S /run/systemd/journal/socket ] && break
    sleep 0.05
done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start" >&2; exit 97; }

"$@" &
daemon=$!
echo "$daemon" > "$out/daemon.pid"
rc=0
wait "$daemon" || rc=$?

kill -TERM "$journald"
wait "$journald" || true
cp -r /run/log/journal "$out/journal"
exit "$rc"
