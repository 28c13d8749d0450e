"""Package wiring: manifest, executables, launch files and parameter files agree."""

import configparser
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.xml"))


def _console_scripts():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=", 1) for line in lines)


def test_manifest_parses_and_is_an_interface_package():
    package = parse_package(ROOT / "package.xml")
    assert package.name == "failrecov_ros"
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    assert package.version == "0.1.0"


def test_every_console_script_is_installed_and_importable():
    import importlib

    lib = Path(get_package_prefix("failrecov_ros")) / "lib" / "failrecov_ros"
    for name, target in _console_scripts().items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
        assert (lib / name).is_file(), f"{name} not installed in {lib}"
        assert (lib / name).stat().st_mode & 0o111, f"{name} is not executable"


def test_no_hand_written_interface_subpackages():
    for name in ("msg", "srv", "action"):
        assert not (ROOT / "failrecov_ros" / name).exists()


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist(launch_file):
    share = Path(get_package_share_directory("failrecov_ros"))
    assert (share / "launch" / launch_file.name).is_file()
    root = ET.parse(launch_file).getroot()
    assert root.tag == "launch"
    # Declarations are <arg> outside <include>; inside one they pass values.
    passed = {id(a) for include in root.iter("include") for a in include.iter("arg")}
    for arg in root.iter("arg"):
        if id(arg) not in passed:
            assert arg.get("description"), f"arg {arg.get('name')} has no description"
    nodes = list(root.iter("node"))
    assert nodes
    scripts = _console_scripts()
    for node in nodes:
        if node.get("pkg") == "failrecov_ros":
            assert node.get("exec") in scripts, node.get("exec")
        for param in node.iter("param"):
            source = param.get("from")
            # A file chosen by an argument ($(var params_file)) is resolved and checked by
            # test_launch_runner with the argument's default.
            if source and "$(var " not in source:
                match = re.fullmatch(r"\$\(find-pkg-share failrecov_ros\)/(.+)", source)
                assert match, source
                assert (ROOT / match.group(1)).is_file() and (share / match.group(1)).is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_use_ros_parameters_layout(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    for node_name, section in data.items():
        assert set(section) == {"ros__parameters"}, f"{path.name}: {node_name}"
        # rcl applies a bare 'node:' key only in the root namespace; '/**/node' anywhere.
        assert node_name.startswith("/**/"), f"{path.name}: key {node_name!r}"
