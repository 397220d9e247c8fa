# shellcheck shell=bash
# What scripts/dev-env and scripts/cluster share: `----->` progress lines with times, Debian packages
# installed without starting their services, and daemons started in their own session, tracked by PID.
# Sourced, never run. The sourcing script sets:
#   SCRIPT    its name, for messages (scripts/dev-env)
#   STATE     where PID files live
#   LOGS      where daemon logs and apt.log go
#   PACKAGES  the Debian packages it needs
# and defines expected_comm NAME: the kernel's name (/proc/PID/comm) of daemon NAME's process.

say() { printf -- '-----> %s\n' "$*" >&2; }
info() { printf -- '       %s\n' "$*" >&2; }
die() {
    printf -- ' !     %s\n' "$*" >&2
    exit 1
}
started_at() { T0=$EPOCHREALTIME; }
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

# A zombie counts as gone: the daemons outlive the script, and their new parent may reap them late.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# PID of daemon $1 if the script started it and it still runs; a stale PID file is removed.
our_pid() {
    local name=$1 file="$STATE/$1.pid" pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$(expected_comm "$name")" ]]; then
        echo "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

# start_daemon NAME TIMEOUT READY_CHECK COMMAND...: COMMAND in its own session with output appended to
# LOGS/NAME.log; waits until READY_CHECK passes, and fails with the log's end if the daemon exits.
start_daemon() {
    local name=$1 timeout=$2 ready_check=$3 pid i
    shift 3
    printf '\n=== %s started by %s\n' "$(date -Is)" "$SCRIPT" >>"$LOGS/$name.log"
    # 9>&-: the daemon must not inherit the lock of the script, or it would hold it for its whole life.
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$STATE/$name.pid"
    for ((i = 0; i < timeout * 10; i++)); do
        if "$ready_check"; then
            info "ready in $(elapsed) (pid $pid, log $LOGS/$name.log)"
            return 0
        fi
        if ! alive "$pid"; then
            tail -n 20 "$LOGS/$name.log" >&2 || true
            rm -f "$STATE/$name.pid"
            die "$name exited during start-up (log above, full log in $LOGS/$name.log)"
        fi
        sleep 0.1
    done
    die "$name did not become ready within ${timeout}s (log: $LOGS/$name.log)"
}

# Stops daemon $1 if the script started it: SIGTERM, then SIGKILL after 30 s.
stop_ours() {
    local name=$1 pid i
    if ! pid=$(our_pid "$name"); then
        info "$name: not started by $SCRIPT, nothing to stop"
        return 0
    fi
    say "Stopping $name (pid $pid)"
    started_at
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do
        if ! alive "$pid"; then
            rm -f "$STATE/$name.pid"
            info "stopped in $(elapsed)"
            return 0
        fi
        sleep 0.1
    done
    info "still running after $(elapsed); sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    rm -f "$STATE/$name.pid"
}

# Installs whatever of PACKAGES is missing. Their init scripts would start daemons (dockerd, a registry,
# redis) with their own settings; the scripts start those themselves, so service starts are denied.
ensure_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    say "Installing ${missing[*]}"
    started_at
    local own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    {
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    } >>"$LOGS/apt.log" 2>&1 || rc=$?
    [[ -z $own_policy ]] || rm -f /usr/sbin/policy-rc.d
    if ((rc)); then
        tail -n 20 "$LOGS/apt.log" >&2
        die "apt-get failed (full log in $LOGS/apt.log)"
    fi
    info "done in $(elapsed)"
}
