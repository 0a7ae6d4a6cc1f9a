#!/bin/bash
# verify-units.sh VL2D SYSTEM_SERVICE SYSTEM_SOCKET USER_SERVICE USER_SOCKET CUDA_DROPIN [VL2_HTTP HTTP_SERVICE HTTP_SOCKET]
#
# Runs `systemd-analyze verify` on the built units (ExecStart pointed at the
# built vl2d, since verify checks that the command exists).  Any message is a
# failure: verify only warns about unknown keys.  Then checks the CUDA
# drop-in (systemd/vl2d.service.d/cuda.conf): it verifies cleanly on top of
# the system service, opens the NVIDIA device groups, and leaves every other
# hardening setting as vl2d.service has it (`systemd-analyze security
# --offline` of the service with and without it).  Skips (77) without
# systemd-analyze.
set -euo pipefail

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found: skipping"
    exit 77
fi
vl2d=$(readlink -f "$1")   # meson passes a path relative to the build dir
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/system" "$tmp/user" "$tmp/run"
sed "s|^ExecStart=[^ ]*/vl2d|ExecStart=$vl2d|" "$2" > "$tmp/system/vl2d.service"
cp "$3" "$tmp/system/vl2d.socket"
sed "s|^ExecStart=[^ ]*/vl2d|ExecStart=$vl2d|" "$4" > "$tmp/user/vl2d.service"
cp "$5" "$tmp/user/vl2d.socket"
dropin=${6:+$(readlink -f "$6")}

status=0
check() {
    local what=$1 out
    shift
    if ! out=$("$@" 2>&1); then
        echo "$what: systemd-analyze verify failed:"
        echo "$out"
        status=1
    elif [ -n "$out" ]; then
        echo "$what: systemd-analyze verify complained:"
        echo "$out"
        status=1
    else
        echo "$what: ok"
    fi
}
cd "$tmp/system"
check "system units" systemd-analyze verify --man=no vl2d.socket vl2d.service
cd "$tmp/user"
check "user units" env XDG_RUNTIME_DIR="$tmp/run" \
    systemd-analyze --user verify --man=no vl2d.socket vl2d.service

# the settings the issue asks for are really there
for key in Type=notify User=vl2d RuntimeDirectory=vl2d ProtectSystem=strict \
           ProtectHome=read-only PrivateTmp=yes NoNewPrivileges=yes PrivateNetwork=yes \
           LimitNOFILE=65536 'ExecReload=/bin/kill -HUP $MAINPID'; do
    if ! grep -qxF "$key" "$tmp/system/vl2d.service"; then
        echo "vl2d.service lacks $key"
        status=1
    fi
done
for key in LimitNOFILE=65536 'ExecReload=/bin/kill -HUP $MAINPID'; do
    if ! grep -qxF "$key" "$tmp/user/vl2d.service"; then
        echo "user vl2d.service lacks $key"
        status=1
    fi
done
for key in ListenStream=/run/vl2d/vl2d.sock SocketMode=0660 SocketGroup=vl2; do
    if ! grep -qx "$key" "$tmp/system/vl2d.socket"; then
        echo "vl2d.socket lacks $key"
        status=1
    fi
done

# -- the CUDA drop-in ------------------------------------------------------
if [ -z "$dropin" ] || [ ! -f "$dropin" ]; then
    echo "no CUDA drop-in (vl2d.service.d/cuda.conf) given or found: '$dropin'"
    exit 1
fi
mkdir -p "$tmp/cuda/vl2d.service.d"
cp "$tmp/system/vl2d.service" "$tmp/system/vl2d.socket" "$tmp/cuda/"
cp "$dropin" "$tmp/cuda/vl2d.service.d/cuda.conf"
cd "$tmp/cuda"
check "system units + cuda.conf" systemd-analyze verify --man=no vl2d.socket vl2d.service

# It may change these keys and nothing else, all in [Service].
allowed="PrivateDevices DevicePolicy DeviceAllow MemoryDenyWriteExecute"
section=
while IFS= read -r line; do
    case $line in
        ''|'#'*|';'*) continue ;;
        '['*']') section=$line; continue ;;
    esac
    key=${line%%=*}
    if [ "$section" != "[Service]" ] || [[ " $allowed " != *" $key "* ]]; then
        echo "cuda.conf: sets $section $key, which it must leave to vl2d.service"
        status=1
    fi
done < "$dropin"
for key in PrivateDevices=no DevicePolicy=closed; do
    if ! grep -qx "$key" "$dropin"; then
        echo "cuda.conf lacks $key"
        status=1
    fi
done

# The merged unit, as systemd sees it.
if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
    security() {  # "+ NAME" / "- NAME" per line, for the unit in the cwd
        LC_ALL=C systemd-analyze security --offline=yes --no-pager ./vl2d.service \
            | awk '$1 == "+" || $1 == "-" { print $1, $2 }' | sort -u
    }
    cd "$tmp/system"
    base=$(security)
    cd "$tmp/cuda"
    gpu=$(security)
    devices=$(LC_ALL=C systemd-analyze security --offline=yes --no-pager ./vl2d.service \
              | awk '$2 == "DeviceAllow=" { for (i = 3; i <= NF; i++) if ($i ~ /^char-/) printf " %s", $i }')
    if [ -z "$base" ] || [ -z "$gpu" ]; then
        echo "systemd-analyze security --offline printed nothing to compare"
        status=1
    fi
    # every setting that passes without the drop-in still passes with it,
    # except the ones it exists to change
    while read -r mark name; do
        case $name in
            PrivateDevices=|DeviceAllow=|MemoryDenyWriteExecute=) continue ;;
        esac
        if ! grep -qxF "+ $name" <<<"$gpu"; then
            echo "cuda.conf weakens $name"
            status=1
        fi
    done < <(grep '^+ ' <<<"$base")
    if ! grep -qxF "+ PrivateDevices=" <<<"$base"; then
        echo "vl2d.service does not keep PrivateDevices= on by itself"
        status=1
    fi
    # /dev/nvidiaN and nvidiactl (major `nvidia` or `nvidia-frontend`),
    # nvidia-uvm, nvidia-caps: read and write, no mknod
    for group in char-nvidia:rw char-nvidia-frontend:rw char-nvidia-uvm:rw char-nvidia-caps:rw; do
        if [[ " $devices " != *" $group "* ]]; then
            echo "cuda.conf: the device ACL lacks $group (it has:$devices)"
            status=1
        fi
    done
    if [ "$status" -eq 0 ]; then
        echo "cuda.conf: opens$devices; the rest of the hardening unchanged"
    fi
else
    echo "systemd-analyze security --offline not available: merged settings not compared"
fi

# vl2-http's units (arguments 7-9, when it is built): verify, and the
# hardening and the loopback socket are there
if [ $# -ge 9 ]; then
    http=$(readlink -f "$7")
    mkdir -p "$tmp/http"
    sed "s|^ExecStart=[^ ]*/vl2-http|ExecStart=$http|" "$8" > "$tmp/http/vl2-http.service"
    cp "$9" "$tmp/http/vl2-http.socket"
    cd "$tmp/http"
    check "vl2-http units" systemd-analyze verify --man=no vl2-http.socket vl2-http.service
    for key in Type=notify DynamicUser=yes SupplementaryGroups=vl2 ProtectSystem=strict \
               ProtectHome=yes PrivateTmp=yes PrivateNetwork=yes NoNewPrivileges=yes \
               CapabilityBoundingSet= Requires=vl2-http.socket; do
        if ! grep -qx "$key" "$tmp/http/vl2-http.service"; then
            echo "vl2-http.service lacks $key"
            status=1
        fi
    done
    for key in ListenStream=127.0.0.1:11535 IPAddressDeny=any; do
        if ! grep -qx "$key" "$tmp/http/vl2-http.socket"; then
            echo "vl2-http.socket lacks $key"
            status=1
        fi
    done
fi
exit $status
