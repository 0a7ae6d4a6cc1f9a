# lib.sh - shared by the vl2-http tests: a vl2d on a temporary socket
# serving the golden micro checkpoint as model "micro", and vl2-http on a
# free loopback port in front of it.  Source it, then:
#     start_daemon VL2D CKPT PLUGIN_DIR [vl2d args...]   (sets DPID, SOCK)
#     start_gateway VL2HTTP [vl2-http args...]           (sets HPID, URL)
# Everything lives in $DIR, removed at exit with the processes we started.
DIR=$(mktemp -d /tmp/vl2-http-XXXXXX)
SOCK=$DIR/sock
DPID=
HPID=
FAILS=0
PASSES=0

stop_all() {
    [ -n "$HPID" ] && kill "$HPID" 2>/dev/null && wait "$HPID" 2>/dev/null
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    HPID=
    DPID=
}
finish() {
    local rc=$?
    stop_all
    # a sanitizer build reports into the logs; any report fails the test
    if grep -l -E 'runtime error|AddressSanitizer|LeakSanitizer' "$DIR"/*.log 2>/dev/null; then
        echo "FAIL: sanitizer report in the logs above"
        FAILS=$((FAILS + 1))
        rc=1
    fi
    if [ "$FAILS" -ne 0 ] || [ "$rc" -ne 0 ]; then
        echo "---- vl2d log"; cat "$DIR/vl2d.log" 2>/dev/null | tail -40
        echo "---- vl2-http log"; cat "$DIR/http.log" 2>/dev/null | tail -40
    fi
    rm -rf "$DIR"
    exit "$rc"
}
trap finish EXIT

ok()   { PASSES=$((PASSES + 1)); echo "ok: $*"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL: $*"; }
# check DESCRIPTION COMMAND...: passes when the command succeeds
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
summary() {
    echo "$PASSES passed, $FAILS failed"
    [ "$FAILS" -eq 0 ]
}

start_daemon() {
    local vl2d=$1 ckpt=$2 plugins=$3 i
    shift 3
    [ -f "$DIR/vl2d.log" ] && cat "$DIR/vl2d.log" >> "$DIR/old-vl2d.log"
    env -u LISTEN_FDS -u LISTEN_PID -u NOTIFY_SOCKET -u VL2_SOCKET \
        "$vl2d" serve --no-config --model "micro=$ckpt" --plugin-dir "$plugins" \
        --socket "$SOCK" --threads 2 --no-notify --no-socket-activation "$@" \
        > "$DIR/vl2d.log" 2>&1 &
    DPID=$!
    for i in $(seq 300); do
        [ -S "$SOCK" ] && return 0
        kill -0 "$DPID" 2>/dev/null || { echo "vl2d exited early"; cat "$DIR/vl2d.log"; exit 1; }
        sleep 0.05
    done
    echo "vl2d did not create $SOCK"
    exit 1
}

start_gateway() {
    local bin=$1 i
    shift
    [ -f "$DIR/http.log" ] && cat "$DIR/http.log" >> "$DIR/old-http.log"
    : > "$DIR/http.log"
    env -u LISTEN_FDS -u LISTEN_PID -u NOTIFY_SOCKET \
        "$bin" --no-config --daemon-socket "$SOCK" --listen 127.0.0.1:0 "$@" \
        > "$DIR/http.log" 2>&1 &
    HPID=$!
    for i in $(seq 200); do
        URL=$(grep -o 'listening on http://[0-9.:]*' "$DIR/http.log" | sed 's/listening on //')
        [ -n "$URL" ] && break
        kill -0 "$HPID" 2>/dev/null || { echo "vl2-http exited early"; cat "$DIR/http.log"; exit 1; }
        sleep 0.05
    done
    [ -n "$URL" ] || { echo "vl2-http did not start"; exit 1; }
    # ready: the model is loaded (not asked of a fake daemon: NO_HEALTH=1)
    [ -n "${NO_HEALTH:-}" ] && return 0
    for i in $(seq 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && return 0
        sleep 0.05
    done
    echo "vl2-http /health never became 200"
    exit 1
}
