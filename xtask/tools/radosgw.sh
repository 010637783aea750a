#!/usr/bin/env bash
# Throwaway single-node Ceph cluster + radosgw (S3) on 127.0.0.1, for tests and benchmarks.
#
# Usage:
#   radosgw.sh install            apt-get install the minimal Debian packages (idempotent); prints the version
#   radosgw.sh start DIR PORT     one mon + one OSD + radosgw (beast) on 127.0.0.1:PORT, everything under DIR;
#                                 prints "endpoint=http://127.0.0.1:PORT access_key=... secret_key=..." on stdout
#   radosgw.sh stop DIR           kill every daemon of DIR (pid files) and remove DIR
#   radosgw.sh status DIR         print the daemons of DIR and their RSS
#   radosgw.sh gc DIR             free the space of deleted objects now (radosgw keeps it for hours)
#   radosgw.sh check              print the installed version if it is the expected one; fail otherwise
#
# Environment (all optional):
#   RGW_ACCESS_KEY / RGW_SECRET_KEY   S3 credentials of the user created at start (fixed defaults below)
#   RGW_OSD_STORE=bluestore|memstore  OSD backend (default bluestore on a sparse file under DIR; memstore keeps
#                                     every object in the OSD's RAM)
#   RGW_OSD_SIZE_GB=N                 size of the OSD (sparse bluestore file, or memstore's cap); default 20
#   RGW_START_TIMEOUT=N               seconds to wait for each step (default 120)
#   RGW_EXPECTED_MAJOR=N              Ceph major version required (default 16 = pacific, Debian bookworm)
#
# No systemd, /etc/ceph, /var/lib/ceph, /var/log/ceph or /run/ceph is used: conf, keyring, mon store, OSD, logs,
# admin sockets and pid files all live in DIR, so several clusters can run side by side. Every ceph command
# gets "-c DIR/ceph.conf" explicitly. Tested with DIR on ext4 and on tmpfs (kernel 6.18). Bluestore's file is
# sparse: disk use is what was stored plus ~100 MB. No mgr is run: S3 does not need it (`ceph -s` then has no
# PG/usage stats and, after ~2 min, reports MGR_DOWN).
set -euo pipefail

EXPECTED_MAJOR=${RGW_EXPECTED_MAJOR:-16}
PACKAGES=(radosgw ceph-mon ceph-osd)
ACCESS_KEY=${RGW_ACCESS_KEY:-RGWTESTACCESSKEY0001}
SECRET_KEY=${RGW_SECRET_KEY:-rgwtestsecretkey0000000000000000000000001}
OSD_STORE=${RGW_OSD_STORE:-bluestore}
OSD_SIZE_GB=${RGW_OSD_SIZE_GB:-20}
TIMEOUT=${RGW_START_TIMEOUT:-120}
RGW_NAME=client.rgw.gw

log() { echo "radosgw.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

installed_version() { dpkg-query -W -f='${Version}' radosgw 2>/dev/null || true; }

check_version() {
    local v major
    v=$(installed_version)
    [ -n "$v" ] || die "radosgw is not installed; run: $0 install"
    major=${v%%.*}
    major=${major#*:}
    [ "$major" = "$EXPECTED_MAJOR" ] ||
        die "installed radosgw is $v but major $EXPECTED_MAJOR is expected (set RGW_EXPECTED_MAJOR to override)"
    for p in "${PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)" = "$v" ] ||
            die "$p is not installed at version $v; run: $0 install"
    done
}

cmd_install() {
    local missing=() p cand major
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        cand=$(apt-cache policy radosgw 2>/dev/null | awk '/Candidate:/{print $2}')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            log "apt-get update"
            apt-get update -qq >&2
            cand=$(apt-cache policy radosgw 2>/dev/null | awk '/Candidate:/{print $2}')
        fi
        major=${cand%%.*}
        major=${major#*:}
        [ "$major" = "$EXPECTED_MAJOR" ] ||
            die "apt offers radosgw '$cand', but major $EXPECTED_MAJOR is expected (Debian bookworm ships 16.2.x)"
        log "installing ${PACKAGES[*]} ($cand)"
        # Pin all three to the same version; --no-install-recommends keeps out ceph-mgr, ceph-mds, etc.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]/%/=$cand}" >&2
    fi
    check_version
    echo "radosgw $(installed_version) ($(radosgw --version 2>/dev/null | head -1))"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_in_use() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

# wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

dump_logs() {
    local d=$1 f
    for f in "$d"/log/*.log "$d"/log/*.stderr; do
        [ -f "$f" ] || continue
        log "---- last lines of $f"
        tail -n 25 "$f" >&2 || true
    done
}

fail_start() {
    log "error: $*"
    exit 1  # the EXIT trap set in cmd_start dumps the logs and cleans up
}

write_conf() {
    local d=$1 fsid=$2 mon_port=$3 rgw_port=$4
    cat >"$d/ceph.conf" <<EOF
# Throwaway cluster made by $0; everything lives in $d
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon_port]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $d/keyring
run_dir = $d/run
admin_socket = $d/run/\$name.asok
pid_file = $d/run/\$name.pid
log_file = $d/log/\$name.log
mon_cluster_log_file = $d/log/cluster.log
crash_dir = $d/crash
log_to_stderr = false
err_to_stderr = true
# one OSD, no replication, few PGs, no mgr
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 500
# faster map updates (each rgw pool creation is one osdmap epoch; the default interval is 1 s)
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[mon]
mon_data = $d/mon.\$id
mon_memory_target = 134217728
mon_memory_autotune = false
mon_osd_cache_size = 20
rocksdb_cache_size = 16777216
mon_data_avail_warn = 2
mon_data_avail_crit = 1

[osd]
osd_data = $d/osd.\$id
osd_objectstore = $OSD_STORE
bluestore_block_create = true
bluestore_block_size = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
bluestore_fsck_on_mount = false
bluestore_fsck_on_mkfs = false
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
bluestore_rocksdb_options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=16777216,writable_file_max_buffer_size=0,compaction_readahead_size=2097152,max_background_compactions=1,max_total_wal_size=67108864
memstore_device_bytes = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
# 896 MiB is this option's minimum; with bluestore_cache_autotune off it only matters as a ceiling hint
osd_memory_target = 939524096
osd_memory_cache_min = 33554432
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_min_pg_log_entries = 100
osd_max_pg_log_entries = 500
osd_pg_log_dups_tracked = 500
osd_pg_log_trim_min = 50
osd_max_object_size = 134217728
osd_crush_update_on_start = true
osd_class_update_on_start = false

[$RGW_NAME]
rgw_data = $d/rgw
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_thread_pool_size = 32
rgw_dns_name =
rgw_enable_usage_log = false
rgw_override_bucket_index_max_shards = 1
EOF
}

# Run a ceph CLI tool against DIR's cluster.
c() { local tool=$1; shift; "$tool" -c "$DIR/ceph.conf" "$@"; }

daemon_env() {
    # glibc malloc (Debian's ceph is not built with tcmalloc): fewer arenas = much lower RSS.
    env MALLOC_ARENA_MAX=2 "$@"
}

cmd_start() {
    [ $# -eq 2 ] || usage
    DIR=$1
    local port=$2
    [[ $port =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "bad PORT '$port'"
    case $OSD_STORE in bluestore | memstore) ;; *) die "RGW_OSD_STORE must be bluestore or memstore" ;; esac
    check_version
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        die "$DIR exists and is not empty (stop it first: $0 stop $DIR)"
    fi
    if port_in_use "$port"; then die "127.0.0.1:$port is already in use"; fi
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    # Any failure from here on stops what was started and removes DIR.
    trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed (exit $rc)"; dump_logs "$DIR"; cmd_stop "$DIR" >&2 || true; fi' EXIT
    mkdir -p "$DIR"/{run,log,crash,rgw,mon.a,osd.0}

    local t0 t fsid mon_port osd_uuid osd_id
    t0=$(now)
    fsid=$(uuidgen)
    mon_port=$(free_port)
    write_conf "$DIR" "$fsid" "$mon_port" "$port"

    # Keys for every entity up front; the mon imports them (with caps) at mkfs.
    local k=$DIR/keyring
    ceph-authtool "$k" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
    ceph-authtool "$k" --gen-key -n "$RGW_NAME" \
        --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null

    # --- mon
    t=$(now)
    c ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$k" >"$DIR/log/mkfs-mon.out" 2>&1 ||
        fail_start "ceph-mon --mkfs failed: $(cat "$DIR/log/mkfs-mon.out")"
    daemon_env ceph-mon -c "$DIR/ceph.conf" -i a 2>>"$DIR/log/mon.a.stderr" || fail_start "ceph-mon did not start"
    wait_for "$TIMEOUT" "mon" c ceph --connect-timeout 5 mon stat || fail_start "mon did not answer"
    log "mon up on 127.0.0.1:$mon_port ($(elapsed "$t") s)"

    # --- osd
    t=$(now)
    osd_uuid=$(uuidgen)
    osd_id=$(c ceph --connect-timeout 10 osd new "$osd_uuid") || fail_start "ceph osd new failed"
    [ "$osd_id" = 0 ] || fail_start "expected osd id 0, got '$osd_id'"
    c ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/mkfs-osd.out" 2>&1 ||
        fail_start "ceph-osd --mkfs failed: $(tail -5 "$DIR/log/mkfs-osd.out")"
    daemon_env ceph-osd -c "$DIR/ceph.conf" -i 0 2>>"$DIR/log/osd.0.stderr" || fail_start "ceph-osd did not start"
    osd_up() { c ceph --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd\.0 up .* in '; }
    wait_for "$TIMEOUT" "osd" osd_up || fail_start "osd.0 did not come up"
    log "osd.0 ($OSD_STORE) up ($(elapsed "$t") s)"

    # --- S3 user (radosgw-admin creates the rgw pools and waits for their PGs)
    t=$(now)
    timeout "$TIMEOUT" radosgw-admin -c "$DIR/ceph.conf" user create --uid=test --display-name="test user" \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$DIR/log/user-create.out" 2>&1 ||
        fail_start "radosgw-admin user create failed: $(tail -5 "$DIR/log/user-create.out")"
    log "S3 user created ($(elapsed "$t") s)"

    # --- radosgw
    t=$(now)
    daemon_env radosgw -c "$DIR/ceph.conf" -n "$RGW_NAME" 2>>"$DIR/log/rgw.stderr" || fail_start "radosgw did not start"
    local endpoint=http://127.0.0.1:$port
    s3_ok() {
        # A signed ListBuckets must succeed (200), not just an open port.
        # (curl 7.88 does not add x-amz-content-sha256 itself; this is the SHA-256 of an empty body)
        curl -sf -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" \
            -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
            --user "$ACCESS_KEY:$SECRET_KEY" "$endpoint/"
    }
    wait_for "$TIMEOUT" "radosgw" s3_ok || fail_start "radosgw did not answer a signed ListBuckets on $endpoint"
    log "radosgw up on $endpoint ($(elapsed "$t") s); total start $(elapsed "$t0") s"
    cmd_status "$DIR" >&2
    trap - EXIT
    echo "endpoint=$endpoint access_key=$ACCESS_KEY secret_key=$SECRET_KEY"
}

# Pids of DIR's daemons: from pid files, plus any process whose command line names DIR's exact conf
# (covers a daemon that died before writing its pid file or whose file was removed).
dir_pids() {
    local d=$1 f p conf=$1/ceph.conf
    {
        for f in "$d"/run/*.pid; do
            [ -f "$f" ] || continue
            p=$(cat "$f" 2>/dev/null || true)
            [[ $p =~ ^[0-9]+$ ]] && [ -d "/proc/$p" ] && { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null |
                grep -qF -- "$conf" && echo "$p"
        done
        for f in /proc/[0-9]*/cmdline; do
            p=${f#/proc/}
            p=${p%/cmdline}
            [ "$p" = $$ ] && continue
            { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF -- "$conf" || continue
            case $({ cat "/proc/$p/comm"; } 2>/dev/null) in ceph-mon | ceph-osd | radosgw | radosgw-admin) echo "$p" ;; esac
        done
    } | sort -un
}

cmd_gc() {
    [ $# -eq 1 ] || usage
    DIR=$(cd "$1" 2>/dev/null && pwd) || die "no such dir $1"
    c radosgw-admin gc process --include-all >&2
}

cmd_status() {
    [ $# -eq 1 ] || usage
    local d p total=0 rss
    d=$(cd "$1" 2>/dev/null && pwd) || die "no such dir $1"
    for p in $(dir_pids "$d"); do
        rss=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + rss))
        printf '%-10s pid %-7s RSS %6d MiB\n' "$(cat "/proc/$p/comm")" "$p" $((rss / 1024))
    done
    printf 'total RSS %d MiB\n' $((total / 1024))
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# stop_pids GRACE_SECONDS PID...: SIGTERM, wait up to GRACE_SECONDS, then SIGKILL and wait.
stop_pids() {
    local grace=$1 p left i
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for i in $(seq $((grace * 10))); do
        left=""
        for p in "$@"; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    log "killing -9$left"
    kill -KILL $left 2>/dev/null || true
    for i in $(seq 50); do
        left=""
        for p in "$@"; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    log "warning: still alive after SIGKILL:$left"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local d p comm rgw="" osd="" mon="" other=""
    [ -e "$1" ] || { log "$1 does not exist; nothing to stop"; return 0; }
    d=$(cd "$1" && pwd)
    [ -f "$d/ceph.conf" ] || [ -d "$d/run" ] || die "$d does not look like a dir made by '$0 start'; not removing it"
    for p in $(dir_pids "$d"); do
        comm=$({ cat "/proc/$p/comm"; } 2>/dev/null || true)
        case $comm in
        radosgw) rgw="$rgw $p" ;;
        ceph-osd) osd="$osd $p" ;;
        ceph-mon) mon="$mon $p" ;;
        *) other="$other $p" ;;
        esac
    done
    # Clients first, then the OSD (it tells the mon it is going down), then the mon. The data is thrown
    # away, so a short grace period is enough.
    stop_pids 3 $rgw $other
    stop_pids 3 $osd
    stop_pids 3 $mon
    rm -rf "$d"
    log "stopped and removed $d"
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
install) [ $# -eq 0 ] || usage; cmd_install ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
status) cmd_status "$@" ;;
gc) cmd_gc "$@" ;;
check)
    [ $# -eq 0 ] || usage
    check_version
    echo "radosgw $(installed_version) ($(radosgw --version 2>/dev/null | head -1))"
    ;;
-h | --help | help) usage ;;
*) usage ;;
esac
