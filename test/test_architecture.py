"""The ROS-free layers import no rclpy, message packages or ROS-facing modules of ours.

Checked twice: statically over every import statement, and at run time by importing every
module with rclpy and all *_msgs packages made unimportable.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "failrecov_ros"
# Layers below the line in design.md; the ones that do not exist yet are checked once they do.
ROS_FREE_LAYERS = ["core", "monitor", "models", "skills", "robots", "sim", "datagen",
                   "training", "evaluation", "perception"]
FORBIDDEN_TOP = {"rclpy", "rosidl_runtime_py", "rosbag2_py", "launch", "launch_ros", "tf2_ros",
                 "cv_bridge", "message_filters", "ament_index_python", "rosidl_parser"}
FORBIDDEN_OURS = {"failrecov_ros.msg", "failrecov_ros.srv", "failrecov_ros.action",
                  "failrecov_ros.ros", "failrecov_ros.nodes", "failrecov_ros.cli"}


def _ros_free_files():
    files = []
    for layer in ROS_FREE_LAYERS:
        path = PACKAGE / layer
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.with_suffix(".py").exists():
            files.append(path.with_suffix(".py"))
    return files


def _violation(module: str) -> bool:
    top = module.split(".")[0]
    if top in FORBIDDEN_TOP or top.endswith(("_msgs", "_srvs", "_interfaces")):
        return True
    return any(module == m or module.startswith(m + ".") for m in FORBIDDEN_OURS)


def _imports(tree: ast.AST, module_name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve relative imports against the module's package
                base = module_name.split(".")[: -node.level]
                yield ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    yield ".".join(base + ([node.module] if node.module else []) + [alias.name])
            else:
                yield node.module or ""
                for alias in node.names:
                    yield f"{node.module}.{alias.name}"


def test_core_layer_exists():
    assert _ros_free_files(), "no ROS-free modules found: the check would be vacuous"


def test_ros_free_layers_do_not_import_ros_statically():
    offenders = []
    for path in _ros_free_files():
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.relative_to(ROOT)}: {m}" for m in _imports(tree, module_name)
                      if _violation(m)]
    assert not offenders, "ROS imports in ROS-free layers:\n" + "\n".join(offenders)


def test_checker_detects_a_violation():
    tree = ast.parse("from rclpy.node import Node\nfrom ..ros import qos\nimport sensor_msgs.msg")
    found = [m for m in _imports(tree, "failrecov_ros.core.x") if _violation(m)]
    assert "rclpy.node" in found and "failrecov_ros.ros" in found and "sensor_msgs.msg" in found


BLOCKER = r'''
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in {"rclpy", "rosidl_runtime_py", "ament_index_python"} or \
                top.endswith(("_msgs", "_srvs", "_interfaces")) or \
                name.startswith(("failrecov_ros.msg", "failrecov_ros.ros", "failrecov_ros.nodes")):
            raise ImportError(f"blocked ROS import: {name}")
        return None
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
'''


def test_ros_free_layers_import_without_ros():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in _ros_free_files()]
    result = subprocess.run([sys.executable, "-c", BLOCKER, *modules], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"imported {len(modules)}" in result.stdout
