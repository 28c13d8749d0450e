# Source me: the environment of the PyPI-wheel ROS 2 set-up (after scripts/setup.sh).
_failrecov_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC1091
source "${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}/bin/activate"
export AMENT_PREFIX_PATH=${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}
# shellcheck disable=SC1091
source "$_failrecov_root/install/setup.bash"
# Images go through Fast DDS shared memory in one piece (config/fastdds_shm.xml: 8 MB segments;
# the default 512 KB ones fragment a 640x480 image, 14 ms instead of 3); discovery stays on this
# machine unless the caller says otherwise.
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_failrecov_root/config/fastdds_shm.xml}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export PYTHONUNBUFFERED=1
# The vLLM test tier's separate environment (scripts/setup.sh makes it for ./run test).
export FAILRECOV_VLLM_VENV=${FAILRECOV_VLLM_VENV:-$(dirname "${FAILRECOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/failrecov_ros/venv}")/vllm-venv}
unset _failrecov_root
