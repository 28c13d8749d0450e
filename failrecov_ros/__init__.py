"""failrecov_ros: detect, diagnose and recover from manipulation failures on ROS 2.

The source tree and the colcon install both provide parts of this package (the install adds
the rosidl-generated ``msg``/``action`` modules), so the package path is extended to span both.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
