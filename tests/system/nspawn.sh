#!/usr/bin/env bash
# System test driver: tokend's units under a real systemd as PID 1.
#
#   tests/system/nspawn.sh WORK DEB        (as root)
#
# Boots the host's own /usr with `systemd-nspawn --boot --volatile=yes`
# (a tmpfs root, an empty /etc, the host's /usr under a writable layer),
# installs tokend's .deb DEB with `dpkg -i`, and walks through what an
# administrator does: start the socket, let a client activate the service,
# add credentials with the CLI, reload, restart, stop, start again; then
# purges the package. Everything runs from the installed files. It reports
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
# DEB is built by debian/build-deb (tests/it/support/deb.rs).
#
# How it is put together:
# - `unshare --mount` (the script re-executes itself in a private mount
#   namespace) with a tmpfs on /run: the staging files below and nspawn's own
#   runtime files (/run/systemd/nspawn/...) live there and vanish with the
#   namespace. No mount, file or directory is left on the host.
# - `--volatile=yes`: the container's root is a tmpfs with only /usr from the
#   host, so /etc and /var start empty (a pristine system: the package's
#   postinst must create the tokend user with systemd-sysusers and
#   /run/tokend-root with systemd-tmpfiles) and everything written is gone at
#   power-off.
#   (systemd 252's nspawn refuses `-D /` with --volatile=overlay: only
#   yes, state or --ephemeral; `state` would leave /etc read-only.)
#   An /etc/machine-id is bound in so that this is not a "first boot":
#   otherwise systemd would apply the vendor presets and enable (and start)
#   whatever the host's packages ship, including tokend.socket itself.
# - dpkg installs into the container's /usr, an `--overlay` of the host's
#   /usr (read-only below) and an empty, writable upper layer in the private
#   /run, and into a copy of the host's dpkg database in the container's
#   /var. That database says which packages the host's /usr holds, so
#   `dpkg -i` checks the package's Depends against what is really there, and
#   its maintainer scripts run with the host's systemd-sysusers,
#   systemd-tmpfiles, deb-systemd-helper and dpkg-statoverride. Nothing
#   reaches the host: the layer vanishes with the namespace, the copy with
#   the container.
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

if [ $# -ne 2 ]; then
    echo "usage: $0 WORK DEB" >&2
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
deb=$(realpath "$2")
[ -f "$deb" ] || { echo "no package at $deb" >&2; exit 2; }

# A private mount namespace for everything below (same PID: unshare execs).
if [ "${TOKEND_SYSTEST_UNSHARED:-}" != 1 ]; then
    export TOKEND_SYSTEST_UNSHARED=1
    exec unshare --mount --propagation private -- "$BASH" "$0" "$work" "$deb"
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
# Room for the package's files and dpkg's database changes.
mount -t tmpfs -o mode=0755,size=512m tmpfs /run
stage=/run/tokend-systest
# The writable layer over the container's /usr.
mkdir -p "$stage/usr-upper"
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
        --overlay="/usr:$stage/usr-upper:/usr" \
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

# --- The package ------------------------------------------------------------------
say USER_BEFORE_INSTALL "$(in_ct getent passwd tokend || echo none)"
tar -C /var/lib -cf - dpkg | in_ct tar -C /var/lib -xf -
# The host's overrides name the host's users and groups, which this /etc
# lacks; dpkg refuses to run with an override for an unknown group.
in_ct sh -c ': >/var/lib/dpkg/statoverride'
in_ct sh -c 'cat >/tmp/tokend.deb' <"$deb"
# A container image's policy-rc.d (exit 101: "do not start or stop
# services") would keep the maintainer scripts from stopping the service on
# removal; a real system has none. Removed in the container's layer only.
in_ct rm -f /usr/sbin/policy-rc.d
in_ct dpkg -i /tmp/tokend.deb >&2 && rc=0 || rc=$?
say DPKG_INSTALL_RC "$rc"
[ "$rc" = 0 ] || die "dpkg -i failed"
say DPKG_STATUS "$(in_ct dpkg-query -W -f='${db:Status-Abbrev}' tokend | tr -d ' ')"
say INSTALLED_VERSION "$(in_ct tokend --version)"
say INSTALLED_BINARY "$(in_ct stat -c '%a %U:%G' /usr/bin/tokend || true)"
# postinst: systemd-sysusers (the user), systemd-tmpfiles (the empty root of
# the service's sandbox), dpkg-statoverride (the conffile), and nothing
# enabled or started.
say TOKEND_USER "$(in_ct getent passwd tokend | cut -d: -f1,6,7)"
say ROOT_DIRECTORY "$(in_ct stat -c '%a %U:%G' /run/tokend-root || true)"
say CONFIG_FILE "$(in_ct stat -c '%a %U:%G' /etc/tokend/config.toml || true)"
say CONFFILES "$(in_ct dpkg-query -W -f='${Conffiles}' tokend | awk 'NF { print $1 }' | paste -sd, -)"
say ENABLED_AFTER_INSTALL "$(in_ct systemctl is-enabled tokend.socket tokend.service | paste -sd, - || true)"
say ACTIVE_AFTER_INSTALL "$(in_ct systemctl is-active tokend.socket tokend.service | paste -sd, - || true)"
# The completions and the manual, where bash, zsh, fish and man look.
say BASH_COMPLETION "$(in_ct bash -c '. /usr/share/bash-completion/completions/tokend && complete -p tokend' || true)"
say ZSH_COMPLETION "$(in_ct head -c 9 /usr/share/zsh/vendor-completions/_tokend || true)"
say FISH_COMPLETION "$(in_ct grep -c '^complete -c tokend' /usr/share/fish/vendor_completions.d/tokend.fish || true)"
say MAN_PAGES "$(in_ct sh -c 'ls /usr/share/man/man1/tokend*.1.gz | wc -l')"
say MAN_TITLE "$(in_ct sh -c 'zcat /usr/share/man/man1/tokend-get.1.gz | grep "^\.TH"' || true)"
note "installed"

# --- Configuration, as an administrator would write it --------------------------
# The secrets and drop-ins are new files; config.toml is the package's
# conffile, edited in place (so it keeps postinst's owner and mode).
tar -C "$work/etc" --exclude=./tokend/config.toml -cf - . |
    in_ct tar -C /etc -xpf - --no-same-owner --no-overwrite-dir
in_ct sh -c 'cat >/etc/tokend/config.toml' <"$work/etc/tokend/config.toml"
say CONFIG_AFTER_EDIT "$(in_ct stat -c '%a %U:%G' /etc/tokend/config.toml || true)"
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
note "journal saved"

# --- Purge: the package goes, the database stays -------------------------------------
in_ct dpkg --purge tokend >&2 && rc=0 || rc=$?
say PURGE_RC "$rc"
say SERVICE_AFTER_PURGE "$(state tokend.service)"
say SOCKET_AFTER_PURGE "$(state tokend.socket)"
say BINARY_AFTER_PURGE "$(in_ct stat -c %F /usr/bin/tokend 2>/dev/null || echo absent)"
say UNIT_AFTER_PURGE "$(in_ct stat -c %F /usr/lib/systemd/system/tokend.service 2>/dev/null || echo absent)"
say CONFIG_AFTER_PURGE "$(in_ct stat -c %F /etc/tokend/config.toml 2>/dev/null || echo absent)"
say STATOVERRIDE_AFTER_PURGE "$(in_ct dpkg-statoverride --list /etc/tokend/config.toml || echo none)"
say DATABASE_AFTER_PURGE "$(in_ct stat -c '%a %U:%G' /var/lib/tokend/tokend.db || echo absent)"
say DONE "$(ms)"
note "done"
