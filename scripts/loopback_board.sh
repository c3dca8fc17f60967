#!/usr/bin/env bash
# A stand-in for a Raspberry Pi on this machine, set up exactly as a real board is: an
# sshd on 127.0.0.1 that accepts one key, and a python of its own with only onnxruntime
# and numpy. configs/devices/loopback.yaml points at it, so
#   bash scripts/loopback_board.sh            # set up (idempotent) and start the sshd
#   netadapt profile --device loopback --spec configs/mobilenetv3_small.yaml
#   netadapt search --device loopback --spec configs/mobilenetv3_small.yaml --budget 80%
#   bash scripts/loopback_board.sh stop       # stop the sshd
# profiles and searches over ssh end to end. Nothing outside $STATE is touched except
# /run/sshd (sshd's privilege-separation directory, when run as root).
set -euo pipefail

STATE=${NETADAPT_LOOPBACK:-$HOME/.cache/netadapt-loopback}
PORT=${NETADAPT_LOOPBACK_PORT:-2222}
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

if [ "${1:-}" = stop ]; then
  if [ -f "$STATE/sshd.pid" ]; then kill "$(cat "$STATE/sshd.pid")" && rm -f "$STATE/sshd.pid"; fi
  echo "loopback board stopped"
  exit 0
fi

if [ ! -x "$SSHD" ]; then
  echo "error: sshd not found; install it: apt-get install openssh-server" >&2
  exit 1
fi
mkdir -p "$STATE"
chmod 700 "$STATE"
[ -f "$STATE/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key"
[ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/id_ed25519"
cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"   # the board's ~/.ssh/authorized_keys
cat > "$STATE/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $STATE/host_key
AuthorizedKeysFile $STATE/authorized_keys
PidFile $STATE/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF

# The board's python: its own venv with only onnxruntime and numpy (a Pi: the same
# two packages, pip install onnxruntime numpy; PyPI has aarch64 wheels).
if ! "$STATE/board/bin/python" -c "import onnxruntime, numpy" 2>/dev/null; then
  python3 -m venv "$STATE/board"
  "$STATE/board/bin/python" -m pip install -q --disable-pip-version-check onnxruntime numpy \
    2>&1 | grep -v '^WARNING: Location' || true
  "$STATE/board/bin/python" -c "import onnxruntime, numpy"   # fail loudly if pip failed
fi

if [ -f "$STATE/sshd.pid" ] && kill -0 "$(cat "$STATE/sshd.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/sshd.pid")"   # restart: the config may have changed
  sleep 0.5
fi
[ "$(id -u)" != 0 ] || mkdir -p -m 755 /run/sshd
"$SSHD" -f "$STATE/sshd_config"
ssh -p "$PORT" -i "$STATE/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o UserKnownHostsFile="$STATE/known_hosts" -o StrictHostKeyChecking=accept-new \
    "$(id -un)@127.0.0.1" "$STATE/board/bin/python -c 'import onnxruntime; print(\"board ready: onnxruntime\", onnxruntime.__version__)'"
echo "ssh $(id -un)@127.0.0.1 -p $PORT (key $STATE/id_ed25519); now: netadapt profile --device loopback"
