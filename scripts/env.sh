# Source me: the environment of the PyPI-wheel ROS 2 set-up (after scripts/setup.sh).
_failrecov_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC1091
source "${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}/bin/activate"
export AMENT_PREFIX_PATH=${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}
# shellcheck disable=SC1091
source "$_failrecov_root/install/setup.bash"
# Images need Fast DDS's large-data transport (best effort drops almost all frames without it);
# discovery stays on this machine unless the caller says otherwise.
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export PYTHONUNBUFFERED=1
# The vLLM test tier's separate environment (scripts/setup.sh makes it for ./run test).
export FAILRECOV_VLLM_VENV=${FAILRECOV_VLLM_VENV:-$(dirname "${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}")/vllm-venv}
unset _failrecov_root
