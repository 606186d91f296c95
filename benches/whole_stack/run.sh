#!/usr/bin/env bash
# Whole-stack throughput: wrk -> NGINX (1 worker, least_conn, upstream keep-alive) -> 3 instances,
# GET /api/ping with a distinct X-Forwarded-For per request. Variants, alternated in rounds:
#   floor           3 x bare axum hello (examples/hello_floor.rs)
#   embedded        3 x call_center, embedded rate limits, access log off
#   embedded+log    3 x call_center, embedded, access log on at info (stdout to /dev/null)
#   redis           3 x call_center, REDIS_URL + WELCOMEDLY_INSTANCES=3, access log off
#   redis-me        the same, GET /api/me with a logged-in cookie (log in once through NGINX)
#   redis-strict    redis without local-first shares (WELCOMEDLY_RATE_LIMIT_LOCAL_FIRST=false):
#                   every request's limit decided in Redis (coalesced)
#   redis-solo, redis-me-solo   redis and redis-me without coalesced limiter calls
#                   (WELCOMEDLY_RATE_LIMIT_COALESCE=false): one script call per request
#   redis-sentinel, redis-sentinel-me   the same two on Sentinel (a primary, a replica, a sentinel)
#   redis-cluster, redis-cluster-me     the same two on a Redis Cluster (3 masters)
#   peer            3 x benches/whole_stack/peer (axum + tower-sessions 0.14 +
#                   tower-sessions-redis-store 0.16 over fred), GET /api/me with a cookie: one
#                   session read per request, no limiter, no telemetry (REDIS_URL's Redis)
# Prints a Markdown table at the end. See README.md next to this script.
#
# Settings (environment):
#   DURATION=10s     wrk duration of each measured slot (anything wrk's -d accepts)
#   WARMUP=2s        wrk warm-up before each measured slot (0 to skip)
#   ROUNDS=3         rounds; every round runs every variant once, in order
#   VARIANTS="floor embedded embedded+log redis redis-me peer"   which variants, in which order
#                                                  (also the redis-sentinel* and redis-cluster* ones,
#                                                  redis-*-solo without coalescing, and
#                                                  redis-me-uncached: WELCOMEDLY_SESSION_CACHE=off)
#   THREADS=2 CONNECTIONS=64                      wrk -t / -c
#   SKIP_BUILD=1     use already built binaries
#   KEEP_TMP=1       keep the temp dir (configs, logs, wrk outputs) instead of removing it
#   PERF=1           perf record (-F 499, no call graphs) the instances during each measured slot
#                    (implies KEEP_TMP=1; needs perf and perf_event_paranoid permitting it)
#   CARGO_TARGET_DIR honoured when looking for the binaries
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-"floor embedded embedded+log redis redis-me peer"}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
INSTANCES=3

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LUA=$HERE/xff.lua

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

# ---------------------------------------------------------------- dependencies

find_cmd() { # name -> path on PATH or in the sbin dirs (nginx lives in /usr/sbin)
    command -v "$1" 2>/dev/null && return 0
    local d
    for d in /usr/sbin /sbin /usr/local/sbin; do
        [[ -x $d/$1 ]] && { echo "$d/$1"; return 0; }
    done
    return 1
}

declare -A PKG_OF=([nginx]=nginx [wrk]=wrk [redis-server]=redis-server [redis-cli]=redis-tools [curl]=curl)
missing=()
for c in nginx wrk redis-server redis-cli curl; do
    find_cmd "$c" >/dev/null || missing+=("$c")
done
if ((${#missing[@]})); then
    pkgs=()
    for c in "${missing[@]}"; do pkgs+=("${PKG_OF[$c]}"); done
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${pkgs[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${pkgs[@]}" >&2 ||
            { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; }
    else
        die "missing: ${missing[*]}. Install the Debian packages: ${pkgs[*]} (apt-get install ${pkgs[*]}), or put the commands on PATH"
    fi
fi
command -v cargo >/dev/null || [[ ${SKIP_BUILD:-0} == 1 ]] || die "missing: cargo (https://rustup.rs)"
[[ ${PERF:-0} != 1 ]] || command -v perf >/dev/null || die "PERF=1: perf is missing (Debian: linux-perf)"
NGINX=$(find_cmd nginx)
WRK=$(find_cmd wrk)
REDIS_SERVER=$(find_cmd redis-server)
REDIS_CLI=$(find_cmd redis-cli)
CURL=$(find_cmd curl)

# ---------------------------------------------------------------- build

cd "$ROOT"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "building (release): call_center, hello_floor"
    cargo build --release --example call_center --example hello_floor >&2
    if [[ " $VARIANTS " == *" peer "* ]]; then
        say "building (release): the peer (benches/whole_stack/peer: axum + tower-sessions + fred)"
        cargo build --release --manifest-path "$HERE/peer/Cargo.toml" >&2
    fi
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
CALL_CENTER=$TARGET/release/examples/call_center
HELLO=$TARGET/release/examples/hello_floor
[[ -x $CALL_CENTER && -x $HELLO ]] || die "binaries not found under $TARGET/release/examples (build them or unset SKIP_BUILD)"
PEER=$TARGET/release/whole-stack-peer
[[ " $VARIANTS " != *" peer "* || -x $PEER ]] || die "the peer is not built: $PEER (unset SKIP_BUILD)"

# ---------------------------------------------------------------- processes and teardown

TMP=$(mktemp -d "${TMPDIR:-/tmp}/whole-stack.XXXXXX")
PGIDS=()       # every process group started here (each server runs under setsid)
SLOT_PGIDS=()  # the groups of the current slot (instances + NGINX)

stop_groups() { # pgid... : TERM, up to 3 s grace, then KILL
    local g alive i
    for g in "$@"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    for ((i = 0; i < 30; i++)); do
        alive=0
        for g in "$@"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for g in "$@"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    for g in "$@"; do wait "$g" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((${#PGIDS[@]})) && stop_groups "${PGIDS[@]}"
    if [[ ${KEEP_TMP:-0} == 1 || ${PERF:-0} == 1 || $rc != 0 ]]; then
        say "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

spawn() { # log cmd... : start cmd in its own session/process group; sets SPAWNED to its pid (= pgid)
    local log=$1
    shift
    setsid "$@" >"$log" 2>&1 </dev/null &
    SPAWNED=$!
    PGIDS+=("$SPAWNED")
}

forget() { # pgid... : drop from PGIDS after stopping them
    local g keep=() x
    for g in "${PGIDS[@]}"; do
        for x in "$@"; do [[ $g == "$x" ]] && continue 2; done
        keep+=("$g")
    done
    PGIDS=("${keep[@]}")
}

# Ports: below 32768 (the ephemeral range fills with TIME_WAIT sockets after a load test), checked free.
NEXT_PORT=$((20000 + RANDOM % 10000))
port_free() {
    [[ -z $(ss -Hltn "sport = :$1" 2>/dev/null) ]] && ! (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null
}
alloc_port() { # sets PORT_OUT
    local tries=0
    while ((tries++ < 2000)); do
        NEXT_PORT=$((NEXT_PORT + 1))
        ((NEXT_PORT < 32768)) || NEXT_PORT=20000
        if port_free "$NEXT_PORT"; then PORT_OUT=$NEXT_PORT; return 0; fi
    done
    die "no free port below 32768"
}

# wait_http port path pid : until the port answers HTTP (any status), or the process dies (return 1)
wait_http() {
    local i
    for ((i = 0; i < 150; i++)); do
        kill -0 "$3" 2>/dev/null || return 1
        "$CURL" -s -o /dev/null --max-time 1 "http://127.0.0.1:$1$2" && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- Redis (each topology started once, at first use)

# wait_redis port : until it answers PING (or 5 s)
wait_redis() {
    local i
    for ((i = 0; i < 50; i++)); do
        "$REDIS_CLI" -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# start_redis_node log extra-args... : one redis-server on a free port; sets NODE_PORT (its
# process group joins REDIS_GROUPS of the topology being started)
start_redis_node() {
    local log=$1 attempt
    shift
    for attempt in 1 2 3; do
        alloc_port
        local dir=$TMP/redis-$PORT_OUT
        mkdir -p "$dir"
        spawn "$log.$PORT_OUT" "$REDIS_SERVER" --port "$PORT_OUT" --bind 127.0.0.1 --save "" \
            --appendonly no --daemonize no --dir "$dir" "$@"
        if wait_redis "$PORT_OUT"; then
            NODE_PORT=$PORT_OUT
            TOPO_GROUPS+=("$SPAWNED")
            return 0
        fi
        stop_groups "$SPAWNED"; forget "$SPAWNED"
    done
    tail -5 "$log."* >&2 || true
    die "redis-server did not start ($*)"
}

# The environment that points call_center (and the peer: REDIS_URL only) at each topology,
# and the process groups whose CPU counts as "redis".
declare -A REDIS_ENV REDIS_GROUPS
ensure_topology() { # single | sentinel | cluster
    local topo=$1
    [[ -n ${REDIS_ENV[$topo]:-} ]] && return 0
    TOPO_GROUPS=()
    case $topo in
    single)
        start_redis_node "$TMP/redis-server.log"
        REDIS_ENV[$topo]="REDIS_URL=redis://127.0.0.1:$NODE_PORT/"
        say "redis on 127.0.0.1:$NODE_PORT"
        ;;
    sentinel)
        # A primary, a replica and one sentinel (quorum 1): the link asks the sentinel where
        # the primary is, then runs every call there, as on a production Sentinel group.
        local master replica
        start_redis_node "$TMP/redis-primary.log"
        master=$NODE_PORT
        start_redis_node "$TMP/redis-replica.log" --replicaof 127.0.0.1 "$master"
        replica=$NODE_PORT
        alloc_port
        local sport=$PORT_OUT conf=$TMP/sentinel-$PORT_OUT.conf
        printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor wd 127.0.0.1 %s 1\nsentinel down-after-milliseconds wd 5000\n' \
            "$sport" "$TMP" "$master" >"$conf"
        spawn "$TMP/sentinel.log" "$REDIS_SERVER" "$conf" --sentinel
        TOPO_GROUPS+=("$SPAWNED")
        wait_redis "$sport" || { tail -5 "$TMP/sentinel.log" >&2; die "redis sentinel did not start"; }
        REDIS_ENV[$topo]="REDIS_SENTINELS=127.0.0.1:$sport REDIS_SENTINEL_MASTER=wd"
        say "redis sentinel on 127.0.0.1:$sport (primary $master, replica $replica)"
        ;;
    cluster)
        # 3 masters, no replicas (a replica's copy costs its master little; what is measured is
        # the masters' work), cluster bus ports allocated like the others.
        local ports=() seeds=() i bus
        for i in 1 2 3; do
            alloc_port
            bus=$PORT_OUT
            start_redis_node "$TMP/redis-cluster.log" --cluster-enabled yes \
                --cluster-config-file "nodes.conf" --cluster-port "$bus" --cluster-node-timeout 2000
            ports+=("127.0.0.1:$NODE_PORT")
            seeds+=("redis://127.0.0.1:$NODE_PORT")
        done
        "$REDIS_CLI" --cluster create "${ports[@]}" --cluster-replicas 0 --cluster-yes >"$TMP/redis-cluster-create.log" 2>&1 ||
            { tail -5 "$TMP/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
        local ok=0 p
        for ((i = 0; i < 100; i++)); do
            ok=1
            for p in "${ports[@]}"; do
                "$REDIS_CLI" -p "${p##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
            done
            ((ok)) && break
            sleep 0.1
        done
        ((ok)) || die "the Redis Cluster did not reach cluster_state:ok"
        REDIS_ENV[$topo]="REDIS_CLUSTER_NODES=$(IFS=,; echo "${seeds[*]}")"
        say "redis cluster on ${ports[*]}"
        ;;
    esac
    REDIS_GROUPS[$topo]="${TOPO_GROUPS[*]}"
}

topology_of() { # variant -> the Redis topology it runs on, or nothing
    case $1 in
    redis | redis-strict | redis-me | redis-me-uncached | redis-solo | redis-me-solo | peer) echo single ;;
    redis-sentinel | redis-sentinel-me) echo sentinel ;;
    redis-cluster | redis-cluster-me) echo cluster ;;
    esac
}

# ---------------------------------------------------------------- one slot: instances + NGINX + wrk

start_instance() { # variant index : appends to SLOT_PGIDS and UPSTREAM_PORTS
    local variant=$1 idx=$2 attempt bin ready out
    for attempt in 1 2 3; do
        alloc_port
        local port=$PORT_OUT log=$TMP/$variant.$idx.log
        # WELCOMEDLY_API_PER_MINUTE: redis-me sends every request as one user, whose `api` quota
        # (200/min by default) would turn the run into 429s; a quota no run reaches keeps the
        # limiter on the path (same script call per request) without refusing anything.
        local envs=(PORT="$port" TRUSTED_PROXIES=127.0.0.1 RUST_LOG=warn WELCOMEDLY_ACCESS_LOG=off
            WELCOMEDLY_DEMO_PASSWORD=bench-only WELCOMEDLY_API_PER_MINUTE=100000000)
        case $variant in
        floor) bin=$HELLO ready=/api/ping ;;
        embedded) bin=$CALL_CENTER ready=/health ;;
        embedded+log)
            bin=$CALL_CENTER ready=/health
            # The filter applies to the access log's events and spans: info for both.
            envs+=(RUST_LOG=info WELCOMEDLY_ACCESS_LOG=info)
            ;;
        redis | redis-strict | redis-me | redis-me-uncached | redis-sentinel | redis-sentinel-me | redis-cluster | redis-cluster-me | redis-solo | redis-me-solo)
            bin=$CALL_CENTER ready=/health
            # shellcheck disable=SC2206 # the topology's VAR=value words
            envs+=(${REDIS_ENV[$(topology_of "$variant")]} WELCOMEDLY_INSTANCES=$INSTANCES)
            # *-solo: the limiter without coalescing (one script call per request), to compare.
            [[ $variant != *-solo ]] || envs+=(WELCOMEDLY_RATE_LIMIT_COALESCE=false)
            [[ $variant != redis-me-uncached ]] || envs+=(WELCOMEDLY_SESSION_CACHE=off)
            [[ $variant != redis-strict ]] || envs+=(WELCOMEDLY_RATE_LIMIT_LOCAL_FIRST=false)
            ;;
        peer)
            bin=$PEER ready=/api/ping
            # shellcheck disable=SC2206
            envs+=(${REDIS_ENV[single]})
            ;;
        *) die "unknown variant $variant" ;;
        esac
        if [[ $variant == embedded+log ]]; then
            # stdout (the access log) to /dev/null, stderr kept.
            setsid env "${envs[@]}" "$bin" >/dev/null 2>"$log" </dev/null &
            SPAWNED=$!
            PGIDS+=("$SPAWNED")
        else
            spawn "$log" env "${envs[@]}" "$bin"
        fi
        if wait_http "$port" "$ready" "$SPAWNED"; then
            SLOT_PGIDS+=("$SPAWNED")
            UPSTREAM_PORTS+=("$port")
            SLOT_LOGS+=("$log")
            return 0
        fi
        say "$variant instance $idx on port $port did not come up (attempt $attempt):"
        tail -3 "$log" >&2 || true
        stop_groups "$SPAWNED"; forget "$SPAWNED"
    done
    die "$variant: instance $idx failed to start (logs in $TMP)"
}

start_nginx() { # sets NGINX_PORT; appends to SLOT_PGIDS
    local attempt conf=$TMP/nginx.conf p servers=""
    mkdir -p "$TMP/nginx"
    for p in "${UPSTREAM_PORTS[@]}"; do servers+="        server 127.0.0.1:$p;"$'\n'; done
    for attempt in 1 2 3; do
        alloc_port
        NGINX_PORT=$PORT_OUT
        {
            [[ $(id -u) == 0 ]] && echo "user root root;"
            cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream app {
        least_conn;
$servers        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
        } >"$conf"
        spawn "$TMP/nginx/stderr.log" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$conf"
        local i code=
        for ((i = 0; i < 50; i++)); do
            kill -0 "$SPAWNED" 2>/dev/null || break
            code=$("$CURL" -s -o "$TMP/nginx/check.body" -w '%{http_code}' --max-time 1 \
                -H 'X-Forwarded-For: 10.255.255.254' "http://127.0.0.1:$NGINX_PORT/api/ping" || true)
            [[ $code == 200 ]] && break
            sleep 0.1
        done
        if [[ $code == 200 ]]; then
            grep -q '"pong":true' "$TMP/nginx/check.body" ||
                die "unexpected /api/ping body: $(cat "$TMP/nginx/check.body")"
            SLOT_PGIDS+=("$SPAWNED")
            return 0
        fi
        say "nginx on port $NGINX_PORT: no 200 (got '${code}', attempt $attempt)"
        tail -3 "$TMP/nginx/error.log" "$TMP/nginx/stderr.log" >&2 || true
        stop_groups "$SPAWNED"; forget "$SPAWNED"
    done
    die "nginx did not start (config $conf)"
}

group_ticks() { # pgid... -> utime+stime ticks of every process in those groups
    local groups=" $* "
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v groups="$groups" '{
        line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
        # after "pid (comm) ": f[1]=state f[3]=pgrp f[12]=utime f[13]=stime
        if (index(groups, " " f[3] " ")) t += f[12] + f[13]
    } END { printf "%d\n", t }'
}
busy_ticks() { # all CPUs: total busy and total
    awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat
}

run_wrk() { # duration out : wrk through NGINX, in its own group so teardown can stop it
    local offset=$(((RANDOM << 15 | RANDOM) % 16777216))
    setsid "$WRK" -t "$THREADS" -c "$CONNECTIONS" -d "$1" --latency -s "$LUA" \
        "http://127.0.0.1:$NGINX_PORT${WRK_PATH:-/api/ping}" -- "$offset" >"$2" 2>&1 </dev/null &
    local pid=$!
    PGIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    forget "$pid"
    ((rc == 0)) || { cat "$2" >&2; die "wrk failed (rc $rc)"; }
}

to_ms() { # "645.00us" / "1.23ms" / "1.02s" -> ms
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f\n", n
    }'
}

declare -A RPS P50 P99 NON2XX SOCKERR CPU WARNS USPR
run_slot() { # variant round
    local variant=$1 round=$2 i
    SLOT_PGIDS=() UPSTREAM_PORTS=() SLOT_LOGS=()
    local topo redis_groups=()
    topo=$(topology_of "$variant")
    if [[ -n $topo ]]; then
        ensure_topology "$topo"
        read -r -a redis_groups <<<"${REDIS_GROUPS[$topo]}"
    fi
    for ((i = 1; i <= INSTANCES; i++)); do start_instance "$variant" "$i"; done
    start_nginx
    local nginx_pgid=${SLOT_PGIDS[-1]} app_pgids=("${SLOT_PGIDS[@]:0:INSTANCES}")
    WRK_PATH=/api/ping WRK_COOKIE=
    if [[ $variant == *-me || $variant == *-me-solo || $variant == redis-me-uncached || $variant == peer ]]; then
        # An authenticated read: log in once through NGINX, then every request sends the cookie
        # (one session load in Redis per request, beside the rate limiter's script call).
        WRK_COOKIE=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$NGINX_PORT/auth/login" \
            -H 'content-type: application/json' -H 'x-forwarded-for: 10.255.255.254' \
            -d '{"username":"agent","password":"bench-only"}' |
            tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -1)
        [[ -n $WRK_COOKIE ]] || die "$variant: the login through NGINX set no session cookie"
        WRK_PATH=/api/me
    fi
    export WRK_COOKIE
    [[ $WARMUP == 0 || $WARMUP == 0s ]] || run_wrk "$WARMUP" "$TMP/wrk.$variant.$round.warmup.txt"

    local out=$TMP/wrk.$variant.$round.txt
    local a0 n0 r0 b0 t0 a1 n1 r1 b1 t1
    a0=$(group_ticks "${app_pgids[@]}") n0=$(group_ticks "$nginx_pgid")
    r0=0; ((${#redis_groups[@]})) && r0=$(group_ticks "${redis_groups[@]}")
    read -r b0 t0 < <(busy_ticks)
    local perf_pid=
    if [[ ${PERF:-0} == 1 ]]; then
        local pids
        pids=$(pgrep -g "$(IFS=,; echo "${app_pgids[*]}")" -d, || true)
        setsid perf record -q -F 499 -o "$TMP/perf.$variant.$round.data" -p "$pids" >"$TMP/perf.$variant.$round.log" 2>&1 &
        perf_pid=$!
        PGIDS+=("$perf_pid")
        sleep 0.5
    fi
    run_wrk "$DURATION" "$out"
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        forget "$perf_pid"
    fi
    a1=$(group_ticks "${app_pgids[@]}") n1=$(group_ticks "$nginx_pgid")
    r1=0; ((${#redis_groups[@]})) && r1=$(group_ticks "${redis_groups[@]}")
    read -r b1 t1 < <(busy_ticks)

    local rps p50 p99 non2xx sock
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sock=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    [[ -n $rps ]] || { cat "$out" >&2; die "could not read wrk output"; }
    # CPU during the measured slot, in cores (of $(nproc)): app (3 instances), nginx, redis, the rest (wrk + anything else on the box)
    # (all in clock ticks: /proc/stat's total over all CPUs / nproc = elapsed ticks of one CPU)
    local cpu
    cpu=$(awk -v elapsed=$(((t1 - t0) / $(nproc))) -v app=$((a1 - a0)) -v ngx=$((n1 - n0)) \
        -v red=$((r1 - r0)) -v busy=$((b1 - b0)) 'BEGIN {
            if (elapsed <= 0) elapsed = 1
            rest = busy - app - ngx - red; if (rest < 0) rest = 0
            printf "%.2f %.2f %.2f %.2f", app / elapsed, ngx / elapsed, red / elapsed, rest / elapsed
        }')
    RPS[$variant]+="$rps " P50[$variant]+="$p50 " P99[$variant]+="$p99 "
    NON2XX[$variant]=$((${NON2XX[$variant]:-0} + ${non2xx:-0}))
    SOCKERR[$variant]=$((${SOCKERR[$variant]:-0} + ${sock:-0}))
    CPU[$variant]+="$cpu;"
    # CPU time per request (µs) of the app (3 instances together), NGINX and Redis: less sensitive
    # to what else the machine runs than req/s.
    local uspr
    uspr=$(awk -v rps="$rps" -v c="$cpu" 'BEGIN { split(c, f, " "); if (rps <= 0) rps = 1
        printf "%.1f %.1f %.1f", f[1] * 1e6 / rps, f[2] * 1e6 / rps, f[3] * 1e6 / rps }')
    USPR[$variant]+="$uspr;"
    say "round $round  $(printf '%-13s' "$variant") $(printf '%9.0f' "$rps") req/s  p50 ${p50} ms  p99 ${p99} ms  non-2xx ${non2xx:-0}  socket errors ${sock:-0}  cpu app/nginx/redis/rest ${cpu// //} cores, app/nginx/redis ${uspr// //} µs/req"

    stop_groups "${SLOT_PGIDS[@]}"
    forget "${SLOT_PGIDS[@]}"
    SLOT_PGIDS=()
    # Warnings and errors the instances logged during the slot (such as "Redis failed: rate limits
    # fall back"): a slot with some did not measure only the path it names. Not counted for
    # embedded+log, whose log goes to /dev/null.
    local warns
    warns=$(cat "${SLOT_LOGS[@]}" | grep -c -E '"level":"(WARN|ERROR)"|\b(WARN|ERROR)\b' || true)
    WARNS[$variant]=$((${WARNS[$variant]:-0} + warns))
    ((warns == 0)) || say "  $warns warning/error lines in the instance logs, such as: $(cat "${SLOT_LOGS[@]}" | grep -m1 -E 'WARN|ERROR' | cut -c1-300)"
}

say "whole stack: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP) -> nginx (1 worker) -> $INSTANCES instances; $ROUNDS rounds of: $VARIANTS"
say "logs and configs in $TMP"
for ((round = 1; round <= ROUNDS; round++)); do
    for v in $VARIANTS; do run_slot "$v" "$round"; done
done

# ---------------------------------------------------------------- report

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print 0; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
floor_med=
[[ " $VARIANTS " == *" floor "* ]] && floor_med=$(median <<<"${RPS[floor]}")

echo
echo "Whole stack, $(date -u +%Y-%m-%d), $(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds alternated, nginx 1 worker -> $INSTANCES instances, GET /api/ping (the *-me variants and peer: GET /api/me with a logged-in cookie)"
echo
echo "| variant | req/s (median) | req/s per round | p50 ms | p99 ms | non-2xx | socket errors | vs floor | app warnings | CPU cores app/nginx/redis/rest | CPU µs/req app/nginx/redis |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"
for v in $VARIANTS; do
    med=$(median <<<"${RPS[$v]}")
    rounds=$(tr ' ' '\n' <<<"${RPS[$v]}" | awk 'NF { printf "%s%.0f", sep, $1; sep = " / " }')
    ratio=—
    [[ -n $floor_med ]] && ratio=$(awk -v a="$med" -v b="$floor_med" 'BEGIN { printf "%.2f", a / b }')
    # per-column CPU medians
    cpu=""
    for col in 1 2 3 4; do
        c=$(tr ';' '\n' <<<"${CPU[$v]}" | awk -v c="$col" 'NF { print $c }' | tr '\n' ' ' | median)
        cpu+="${cpu:+ / }$c"
    done
    uspr=""
    for col in 1 2 3; do
        c=$(tr ';' '\n' <<<"${USPR[$v]}" | awk -v c="$col" 'NF { print $c }' | tr '\n' ' ' | median)
        uspr+="${uspr:+ / }$c"
    done
    warns=${WARNS[$v]}
    [[ $v == embedded+log ]] && warns=n/a
    printf '| %s | %.0f | %s | %.2f | %.2f | %s | %s | %s | %s | %s | %s |\n' "$v" "$med" "$rounds" \
        "$(median <<<"${P50[$v]}")" "$(median <<<"${P99[$v]}")" "${NON2XX[$v]}" "${SOCKERR[$v]}" "$ratio" \
        "$warns" "$cpu" "$uspr"
done
echo
echo "p50/p99: medians over rounds of wrk's latency percentiles; non-2xx and socket errors: totals over rounds;"
echo "app warnings: WARN/ERROR lines the instances logged, total over rounds (for redis: fallbacks to local limits);"
echo "CPU: median cores busy during the measured slot (rest = wrk and anything else on the machine); µs/req: CPU time per request."
[[ ${PERF:-0} != 1 ]] || echo "perf profiles of the instances: $TMP/perf.<variant>.<round>.data (perf report -i …)"
