#!/bin/bash
# test-cli.sh - vl2-http's command line and configuration file: usage
# errors exit 2, bad settings exit 1 with one line naming the file and line,
# non-loopback listen addresses are refused without allow_remote, the file's
# settings apply (a bound port, a body limit).
#
# usage: test-cli.sh VL2HTTP
set -uo pipefail
BIN=$1
command -v curl >/dev/null || { echo "curl not found: skipping"; exit 77; }
. "$(dirname "$0")/lib.sh"

run() { "$BIN" "$@" > "$DIR/o" 2>&1; echo $?; }
check "--help exits 0 and names the contract flags" \
    bash -c '"$1" --help | grep -q -- "--daemon-socket PATH" && "$1" --help | grep -q -- "--listen HOST:PORT" && "$1" --help | grep -q -- "--api-key KEY"' _ "$BIN"
check "unknown flag: exit 2" test "$(run --no-config --bogus)" = 2
check "flag without value: exit 2" test "$(run --no-config --listen)" = 2
check "--max-body junk: exit 2" test "$(run --no-config --max-body 12Q)" = 2
check "bad listen address: exit 1, one line" \
    bash -c '[ "$("$1" --no-config --listen nope 2>&1; echo " $?")" != "" ] && [ "$("$1" --no-config --listen nope > /dev/null 2>&1; echo $?)" = 1 ] && [ "$("$1" --no-config --listen nope 2>&1 | wc -l)" = 1 ]' _ "$BIN"
check "non-loopback listen refused" \
    bash -c '"$1" --no-config --listen 0.0.0.0:0 2>&1 | grep -q "not loopback"' _ "$BIN"
printf '[http]\nlisten = 127.0.0.1:0\nbogus = 1\n' > "$DIR/bad.conf"
check "unknown key: exit 1 naming file:line" \
    bash -c 'out=$("$1" --config "$2" 2>&1); [ $? = 1 ] && grep -q "bad.conf:3: unknown key .bogus." <<< "$out"' _ "$BIN" "$DIR/bad.conf"
printf '[daemon]\nthreads = 2\n' > "$DIR/bad2.conf"
check "unknown section: exit 1" \
    bash -c '"$1" --config "$2" 2>&1 | grep -q "unknown section"' _ "$BIN" "$DIR/bad2.conf"
check "missing --config file: exit 1" test "$(run --config "$DIR/none.conf")" = 1
printf 'k3y\n' > "$DIR/key"
printf '# test\n[http]\nlisten = 127.0.0.1:0   # any port\nmax_body = 1k\napi_key_file = %s\ndaemon_socket = %s/none.sock\n' \
    "$DIR/key" "$DIR" > "$DIR/good.conf"
"$BIN" --config "$DIR/good.conf" > "$DIR/http.log" 2>&1 &
HPID=$!
for i in $(seq 100); do
    URL=$(grep -o 'listening on http://[0-9.:]*' "$DIR/http.log" | sed 's/listening on //')
    [ -n "$URL" ] && break
    sleep 0.05
done
check "the file's listen applies" test -n "$URL"
check "the file's api key applies" test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/models")" = 401
check "the file's max_body applies" \
    test "$(head -c 2000 /dev/zero | curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer k3y' --data-binary @- "$URL/v1/chat/completions")" = 413
check "no daemon: 503 with the socket named" \
    bash -c '[ "$(curl -s -o "$1" -w "%{http_code}" -H "Authorization: Bearer k3y" "$2/v1/models")" = 503 ] && grep -q none.sock "$1"' _ "$DIR/out" "$URL"
check "GET / answers" test "$(curl -s "$URL/")" = "vl2-http is running"
kill "$HPID"; wait "$HPID"; HPID=

# socket activation: the passed socket wins over --listen
if command -v systemd-socket-activate > /dev/null && \
   "$BIN" --version > /dev/null && ldd "$BIN" | grep -q libsystemd; then
    port=$((20000 + RANDOM % 20000))
    systemd-socket-activate -l "127.0.0.1:$port" "$BIN" --no-config --listen 127.0.0.1:1 \
        --daemon-socket "$DIR/none.sock" > "$DIR/http.log" 2>&1 &
    HPID=$!
    for i in $(seq 100); do
        [ "$(curl -s "http://127.0.0.1:$port/" 2>/dev/null)" = "vl2-http is running" ] && break
        sleep 0.05
    done
    check "socket activation: serves on the passed socket" \
        test "$(curl -s "http://127.0.0.1:$port/")" = "vl2-http is running"
    check "socket activation: says so" grep -q "listening on http://127.0.0.1:$port " "$DIR/http.log"
else
    echo "systemd-socket-activate or libsystemd missing: socket activation not tested"
fi
summary
