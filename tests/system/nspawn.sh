#!/usr/bin/env bash
# System test driver: tokend's units under a real systemd as PID 1.
#
#   tests/system/nspawn.sh WORK [BINARY]        (as root)
#
# Boots the host's own /usr with `systemd-nspawn --boot --volatile=yes`
# (a tmpfs root, an empty /etc, the host's /usr read-only), with tokend
# installed the way the .deb installs it, and walks through what an
# administrator does: start the socket, let a client activate the service,
# add credentials with the CLI, reload, restart, stop, start again. It reports
# what it saw as KEY=VALUE lines on stdout; tests/it/system.rs starts the fake
# providers, prepares WORK, runs this script and asserts on the report. Nothing
# here prints a token: tokens are compared by fingerprint (sha256 prefix).
#
# WORK (prepared by the caller):
#   etc/...            copied into the container's /etc before anything starts
#                      (tokend/config.toml, the client secrets, drop-ins under
#                      systemd/system/tokend.service.d/); modes are kept
#   fast.rt, slow.rt   refresh tokens for `tokend add fast|slow --provider fast|slow`
#                      (provider `fast` issues short-lived access tokens, `slow`
#                      long-lived ones)
# WORK (written here):
#   boot.log           the container's console
#   journal-unit.json  `journalctl -u tokend -o json`
#   journal.export     the whole journal, `journalctl -o export`
#   status-*.json      `tokend status --json` at points of interest
# BINARY defaults to target/debug/tokend.
#
# How it is put together:
# - `unshare --mount` (the script re-executes itself in a private mount
#   namespace) with a tmpfs on /run: the staging files below and nspawn's own
#   runtime files (/run/systemd/nspawn/...) live there and vanish with the
#   namespace. No mount, file or directory is left on the host.
# - `--volatile=yes`: the container's root is a tmpfs with only /usr from the
#   host, so /etc and /var start empty (a pristine system: systemd-sysusers
#   must create the tokend user from our sysusers file, systemd-tmpfiles must
#   create /run/tokend-root) and everything written is gone at power-off.
#   (systemd 252's nspawn refuses `-D /` with --volatile=overlay: only
#   yes, state or --ephemeral; `state` would leave /etc read-only.)
#   An /etc/machine-id is bound in so that this is not a "first boot":
#   otherwise systemd would apply the vendor presets and enable (and start)
#   whatever the host's packages ship, including tokend.socket itself.
# - The package's files, bound read-only at the paths the .deb installs them
#   to: /usr/bin/tokend, /usr/lib/systemd/system/tokend.{service,socket},
#   /usr/lib/sysusers.d/tokend.conf, /usr/lib/tmpfiles.d/tokend.conf. The
#   host's /usr is read-only and has no such files to bind onto, so an
#   `--overlay-ro` stacks a layer of empty placeholder files (in the private
#   /run) over the container's /usr first.
# - `--register=no --keep-unit`: no systemd-machined, no transient scope.
#   nspawn then splits the cgroup it runs in (payload/supervisor); it is run
#   in a cgroup of its own, made here and removed afterwards.
# - The container boots `basic.target`: journald, sysusers, tmpfiles, the
#   socket units; no getty, logind or whatever the host has enabled. It shares
#   the host's network namespace (no --private-network), so the fake providers
#   on the host's 127.0.0.1 are reachable from the daemon inside.
#
# Running commands inside: without machined there is no `machinectl shell` or
# `systemd-run -M`. Instead `nsenter --target LEADER --all` enters every
# namespace (mount, PID, UTS, IPC, cgroup, network) of the container's PID 1,
# LEADER, found as the child of nspawn whose innermost PID is 1 (NSpid in
# /proc/PID/status). The command then sees the container's /, /run and
# /run/systemd/private, so `systemctl`, `journalctl` and `tokend` behave as
# in a root shell inside the container (with a clean environment). Its
# stdin/stdout stay the script's, which is how refresh tokens go in and
# journals come out without touching the container's file system.
#
# Clean-up: a trap powers the container off (SIGRTMIN+4 to its PID 1, what
# `systemctl poweroff` does), waits for nspawn to exit, SIGKILLs the
# container's PID 1 (and with it the whole PID namespace) if that takes more
# than 15 s, and removes the cgroup. A guardian process does the same if this
# script is killed outright (SIGKILL cannot be trapped). Every wait is bounded,
# and the whole run is bounded by $TOKEND_SYSTEST_DEADLINE seconds (default 120).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 WORK [BINARY]" >&2
    exit 2
fi
if ! command -v systemd-nspawn >/dev/null; then
    echo "systemd-nspawn is not installed: apt-get install -y systemd-container" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "$0 must run as root (unshare, mount, systemd-nspawn)" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(cd "$1" && pwd)
binary=$(realpath "${2:-$repo/target/debug/tokend}")
units=$repo/systemd
[ -x "$binary" ] || { echo "no tokend binary at $binary" >&2; exit 2; }

# A private mount namespace for everything below (same PID: unshare execs).
if [ "${TOKEND_SYSTEST_UNSHARED:-}" != 1 ]; then
    export TOKEND_SYSTEST_UNSHARED=1
    exec unshare --mount --propagation private -- "$BASH" "$0" "$work" "$binary"
fi

total=${TOKEND_SYSTEST_DEADLINE:-120}
deadline=$((SECONDS + total))
t0=$(date +%s%N)
ms() { echo $((($(date +%s%N) - t0) / 1000000)); }
say() { echo "$1=$2"; }
note() { echo "[$(ms) ms] $*" >&2; }
die() {
    note "FAILED: $*"
    say FAILED "$*"
    exit 1
}

# --- Staging area, in a private /run -----------------------------------------
mount -t tmpfs -o mode=0755,size=16m tmpfs /run
stage=/run/tokend-systest
mkdir -p "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
    "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d"
# Mount points for the binds below, in the layer laid over /usr.
: >"$stage/usr/bin/tokend"
: >"$stage/usr/lib/systemd/system/tokend.service"
: >"$stage/usr/lib/systemd/system/tokend.socket"
: >"$stage/usr/lib/sysusers.d/tokend.conf"
: >"$stage/usr/lib/tmpfiles.d/tokend.conf"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$stage/machine-id"
echo >>"$stage/machine-id"

# --- A cgroup of our own for nspawn ------------------------------------------
# The directories of this process's cgroup in the unified (cgroup2) and the
# named `systemd` (cgroup v1) hierarchies, whichever are mounted.
cgroups=()
cg_name=tokend-systest.$$
while IFS=: read -r _ controllers path; do
    case $controllers in
    "") mnt=$(awk '$0 ~ / - cgroup2 / { print $5; exit }' /proc/self/mountinfo) ;;
    name=systemd) mnt=$(awk '$0 ~ / - cgroup / && /name=systemd/ { print $5; exit }' /proc/self/mountinfo) ;;
    *) continue ;;
    esac
    dir=${mnt:-/nonexistent}${path%/}/$cg_name
    if [ -n "$mnt" ] && mkdir "$dir" 2>/dev/null; then
        cgroups+=("$dir")
    else
        note "cannot create $dir; nspawn runs in this script's cgroup"
    fi
done </proc/self/cgroup

remove_cgroups() {
    local d
    for d in "${cgroups[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && note "could not remove cgroup $d"
    done
    return 0
}

# --- Clean-up on every exit path ----------------------------------------------
nspawn_pid=
leader=
guardian=
stop_container() {
    [ -n "$nspawn_pid" ] || return 0
    local pid=$nspawn_pid timer rc=0
    nspawn_pid=
    if [ -n "$leader" ]; then
        kill -s RTMIN+4 "$leader" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    (
        trap 'kill "$nap"; wait "$nap"; exit 0' TERM
        sleep 15 &
        nap=$!
        wait "$nap"
        [ -z "$leader" ] || kill -KILL "$leader"
        kill -KILL "$pid"
    ) >/dev/null 2>&1 &
    timer=$!
    wait "$pid" || rc=$?
    kill "$timer" 2>/dev/null || true
    wait "$timer" 2>/dev/null || true
    say NSPAWN_EXIT "$rc"
    note "container gone (nspawn exit $rc)"
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ "$rc" != 0 ] && [ -n "$leader" ]; then
        # For the diagnosis: the journal so far, as text.
        limit=10 in_ct journalctl --no-pager -o short-precise >"$work/journal-failure.txt" 2>&1 || true
    fi
    stop_container
    remove_cgroups
    if [ -n "$guardian" ]; then
        kill -TERM "$guardian" 2>/dev/null || true
        wait "$guardian" 2>/dev/null || true
    fi
    exit "$rc"
}
on_signal() {
    if [ -e "$stage/deadline" ]; then
        die "the deadline of $total s passed"
    fi
    die "interrupted by a signal"
}
trap on_exit EXIT
trap on_signal INT TERM HUP
trap 'note "command failed (line $LINENO): $BASH_COMMAND"' ERR

# The guardian enforces the deadline (SIGTERM to this script, whose trap
# cleans up), and outlives a SIGKILLed script: once its parent is gone it
# kills the container's PID 1 (the whole PID namespace goes with it; the
# mount namespace and its /run go when their last process does) and removes
# the cgroup.
(
    trap '' INT HUP
    trap 'kill "$pause" 2>/dev/null; wait "$pause"; exit 0' TERM
    parent=$$
    pause=
    while :; do
        read -r stat </proc/$BASHPID/stat
        # shellcheck disable=SC2086
        set -- ${stat##*) }
        [ "$2" = "$parent" ] || break
        if [ $SECONDS -ge $deadline ] && [ ! -e "$stage/deadline" ]; then
            : >"$stage/deadline"
            kill -TERM "$parent"
        fi
        sleep 0.5 &
        pause=$!
        wait "$pause"
    done
    [ -s "$stage/leader" ] && kill -KILL "$(cat "$stage/leader")"
    sleep 2
    remove_cgroups
) >/dev/null 2>&1 &
guardian=$!

# --- Boot ---------------------------------------------------------------------
# The daemon's HTTP client loads the system's CA certificates at start (and
# refuses to start without any, even for plain-HTTP loopback providers), and
# /etc starts empty: lend it the host's /etc/ssl (package ca-certificates).
ca_store=()
if [ -d /etc/ssl/certs ]; then
    ca_store=(--bind-ro=/etc/ssl)
else
    note "the host has no /etc/ssl/certs (ca-certificates): tokend will not start"
fi
note "booting"
(
    for d in "${cgroups[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    exec systemd-nspawn --directory=/ --volatile=yes \
        --register=no --keep-unit --console=read-only \
        --overlay-ro="/usr:$stage/usr:/usr" \
        --bind-ro="$binary:/usr/bin/tokend" \
        --bind-ro="$units/tokend.service:/usr/lib/systemd/system/tokend.service" \
        --bind-ro="$units/tokend.socket:/usr/lib/systemd/system/tokend.socket" \
        --bind-ro="$units/tokend.sysusers:/usr/lib/sysusers.d/tokend.conf" \
        --bind-ro="$units/tokend.tmpfile:/usr/lib/tmpfiles.d/tokend.conf" \
        --bind-ro="$stage/machine-id:/etc/machine-id" \
        "${ca_store[@]}" \
        --boot systemd.firstboot=off systemd.unit=basic.target
) </dev/null >"$work/boot.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1: a child of nspawn (its subreaper) that is PID 1 in
# its own PID namespace.
for _ in $(seq 500); do
    for p in $(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null || true); do
        awk '/^NSpid:/ && NF >= 3 && $NF == 1 { found = 1 } END { exit !found }' \
            /proc/"$p"/status 2>/dev/null && leader=$p
    done
    [ -n "$leader" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || die "nspawn exited at once; see $work/boot.log"
    sleep 0.01
done
[ -n "$leader" ] || die "no container PID 1 within 5 s"
echo "$leader" >"$stage/leader"

# Runs a command inside the container (see the header), bounded by $limit s.
limit=20
in_ct() {
    nsenter --target "$leader" --all --root --wd -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
        SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_URLIFY=0 \
        timeout --kill-after=5 "$limit" "$@"
}
# `systemctl is-active UNIT` (prints the state whatever the exit code).
state() { in_ct systemctl is-active "$1" || true; }
show() { in_ct systemctl show -P "$2" "$1"; }

for _ in $(seq 500); do
    in_ct test -S /run/systemd/private 2>/dev/null && break
    sleep 0.02
done
in_ct test -S /run/systemd/private || die "systemd did not come up in the container"
boot_state=$(in_ct systemctl is-system-running --wait || true)
say BOOT_STATE "$boot_state"
say BOOT_MS "$(ms)"
say FAILED_UNITS "$(in_ct systemctl list-units --failed --plain --no-legend | awk '{print $1}' | paste -sd, -)"
note "booted: $boot_state"

say TOKEND_USER "$(in_ct getent passwd tokend | cut -d: -f1,6,7)"
say ROOT_DIRECTORY "$(in_ct stat -c '%a %U:%G' /run/tokend-root || true)"

# --- Configuration, as an administrator would write it --------------------------
tar -C "$work/etc" -cf - . | in_ct tar -C /etc -xpf - --no-same-owner --no-overwrite-dir
# What the .deb's postinst does (dpkg-statoverride root:tokend 0640).
in_ct chgrp tokend /etc/tokend/config.toml
in_ct chmod 0640 /etc/tokend/config.toml
in_ct systemctl daemon-reload

# --- Socket activation ----------------------------------------------------------
# As README says, minus --now: the [Install] sections (Also=) get tested, and
# sockets.target's reference keeps both units loaded after they stop, so that
# `systemctl show` reports their last run rather than a fresh unit's defaults.
in_ct systemctl enable tokend.service && rc=0 || rc=$?
say ENABLE_RC "$rc"
say SOCKET_ENABLED "$(in_ct systemctl is-enabled tokend.socket || true)"
in_ct systemctl start tokend.socket && rc=0 || rc=$?
say SOCKET_START_RC "$rc"
say SOCKET_STATE "$(state tokend.socket)"
say SERVICE_BEFORE_CLIENT "$(state tokend.service)"
say SOCKET_FILE "$(in_ct stat -c '%F %a %U:%G' /run/tokend/tokend.sock || true)"
# The first client connection starts the service.
in_ct tokend status >&2 && rc=0 || rc=$?
say FIRST_CLIENT_RC "$rc"
say SERVICE_AFTER_CLIENT "$(state tokend.service)"
# Nothing below makes sense without a running daemon.
[ "$rc" = 0 ] || die "the first client got no answer (tokend.service: $(state tokend.service))"
# What systemd made of User=, CapabilityBoundingSet=, NoNewPrivileges= and
# SystemCallFilter= (Seccomp 2: filter mode).
main=$(show tokend.service MainPID)
say SERVICE_USER "$(in_ct stat -c %U "/proc/$main")"
# (No awk inside: it is an /etc/alternatives link, and /etc starts empty.)
say SERVICE_SANDBOX "$(in_ct grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$main/status" |
    tr -d '\t' | paste -sd ' ' -)"
note "socket activation done"

# --- Credentials added through the CLI (refresh token on stdin) -----------------
for name in fast slow; do
    in_ct tokend add "$name" --provider "$name" <"$work/$name.rt" >&2 && rc=0 || rc=$?
    say "ADD_${name^^}_RC" "$rc"
    [ "$rc" = 0 ] || die "tokend add $name failed"
done

# The fingerprint of a credential's current access token ("none" if `get`
# fails). The token itself only passes through this shell variable.
fp() {
    local token
    token=$(in_ct tokend get "$1" 2>/dev/null) || { echo none; return; }
    printf %s "$token" | sha256sum | cut -c1-16
}
# Waits (at most $2 s) until `fast` has been refreshed $1 more times in the
# background, and sets $seen to how many it saw. (In this shell, not in a
# $(...) subshell, so that a signal's trap runs within 0.2 s.)
refreshes() {
    local want=$1 until=$((SECONDS + $2)) last next
    seen=0
    last=$(fp fast)
    while [ "$seen" -lt "$want" ] && [ $SECONDS -lt $until ]; do
        sleep 0.2
        next=$(fp fast)
        if [ "$next" != "$last" ] && [ "$next" != none ]; then
            seen=$((seen + 1))
            last=$next
        fi
    done
}
refreshes 2 15
say FAST_REFRESHES "$seen"
note "background refreshes seen"

# --- Reload: same process, same tokens ------------------------------------------
pid_before=$(show tokend.service MainPID)
slow_before=$(fp slow)
say SLOW_BEFORE_RELOAD "$slow_before"
in_ct systemctl reload tokend.service && rc=0 || rc=$?
say RELOAD_RC "$rc"
say SERVICE_AFTER_RELOAD "$(state tokend.service)"
[ "$(show tokend.service MainPID)" = "$pid_before" ] && same=yes || same=no
say SAME_PID_AFTER_RELOAD "$same"
say SLOW_AFTER_RELOAD "$(fp slow)"
refreshes 1 10
say FAST_REFRESHES_AFTER_RELOAD "$seen"
in_ct tokend status --json >"$work/status-after-reload.json" || true
note "reload done"

# --- Restarting the service alone keeps the socket (and its file) ----------------
in_ct systemctl restart tokend.service && rc=0 || rc=$?
say SERVICE_RESTART_RC "$rc"
say SOCKET_FILE_AFTER_SERVICE_RESTART "$(in_ct stat -c %F /run/tokend/tokend.sock || true)"
in_ct tokend status >&2 && rc=0 || rc=$?
say CLIENT_AFTER_SERVICE_RESTART_RC "$rc"

# --- Stop: clean ---------------------------------------------------------------------
in_ct systemctl stop tokend.service tokend.socket && rc=0 || rc=$?
say STOP_RC "$rc"
say SERVICE_AFTER_STOP "$(show tokend.service ActiveState)"
say SOCKET_AFTER_STOP "$(show tokend.socket ActiveState)"
say SERVICE_RESULT "$(show tokend.service Result)"
say SERVICE_EXIT "$(show tokend.service ExecMainCode)/$(show tokend.service ExecMainStatus)"
say SOCKET_FILE_AFTER_STOP "$(in_ct stat -c %F /run/tokend/tokend.sock 2>/dev/null || echo absent)"
say STATE_DIRECTORY "$(in_ct stat -c '%a %U:%G' /var/lib/tokend || true)"
say DATABASE_FILE "$(in_ct stat -c '%a %U:%G' /var/lib/tokend/tokend.db || true)"
note "stopped"

# --- Start again: the database survived, refreshing goes on ----------------------------
in_ct systemctl start tokend.socket && rc=0 || rc=$?
say SOCKET_RESTART_RC "$rc"
in_ct tokend status --json >"$work/status-after-restart.json" && rc=0 || rc=$?
say STATUS_AFTER_RESTART_RC "$rc"
say SERVICE_AFTER_RESTART "$(state tokend.service)"
say SLOW_AFTER_RESTART "$(fp slow)"
refreshes 2 15
say FAST_REFRESHES_AFTER_RESTART "$seen"
in_ct tokend refresh slow >&2 && rc=0 || rc=$?
say SLOW_REFRESH_RC "$rc"
say SLOW_AFTER_REFRESH "$(fp slow)"
say NRESTARTS "$(show tokend.service NRestarts)"
say SERVICE_AT_END "$(state tokend.service)"
note "restart done"

# --- The journal ----------------------------------------------------------------------
in_ct journalctl --no-pager -u tokend -o json >"$work/journal-unit.json" || true
in_ct journalctl --no-pager -o export >"$work/journal.export" || true
say DONE "$(ms)"
note "done"
