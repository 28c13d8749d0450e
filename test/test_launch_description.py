"""The XML launch subset: substitutions, arguments, scopes, includes, conditions, rejections.

Every test runs against a fake ament prefix in tmp_path (no ROS needed), and checks command
lines against the ones launch_ros builds for the same XML.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from failrecov_ros.launching import command, description, substitutions
from failrecov_ros.launching.description import LaunchError, load

ROOT = Path(__file__).resolve().parents[1]


def make_prefix(root: Path, packages: dict[str, list[str]]) -> Path:
    """An ament prefix registering ``packages`` with executable stubs in lib/<pkg>/."""
    for package, executables in packages.items():
        marker = root / "share" / "ament_index" / "resource_index" / "packages" / package
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        (root / "share" / package).mkdir(parents=True, exist_ok=True)
        for exe in executables:
            path = root / "lib" / package / exe
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
    return root


@pytest.fixture
def env(tmp_path):
    prefix = make_prefix(tmp_path / "prefix", {"demo": ["talker", "listener"], "other": ["x"]})
    return {"AMENT_PREFIX_PATH": str(prefix), "HOME_DIR": "/home/me"}


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"<launch>\n{body}\n</launch>\n")
    return path


def plan_of(tmp_path, env, body, arguments=None):
    return load(write(tmp_path, "t.launch.xml", body), arguments, environ=env)


def rejected(tmp_path, env, body, arguments=None) -> str:
    with pytest.raises(LaunchError) as info:
        plan_of(tmp_path, env, body, arguments)
    return str(info.value)


def exe(env, package="demo", name="talker"):
    return f"{env['AMENT_PREFIX_PATH']}/lib/{package}/{name}"


# --- command lines ------------------------------------------------------------------------
def test_full_node_command_line_is_what_launch_ros_builds(tmp_path, env):
    params = tmp_path / "p.yaml"
    params.write_text("talker:\n  ros__parameters: {rate: 2.0}\n")
    plan = plan_of(tmp_path, env, f"""
      <node pkg="demo" exec="talker" name="talk" namespace="robot" args="--fast  -n 3"
            ros_args="--log-level debug">
        <param from="{params}"/>
        <param name="rate" value="5.0"/>
        <remap from="chatter" to="/global_chatter"/>
      </node>""")
    node, = plan.nodes
    assert node.command("/P") == [
        exe(env), "--fast", "-n", "3", "--ros-args", "--log-level", "debug",
        "--ros-args", "-r", "__node:=talk", "-r", "__ns:=/robot",
        "--params-file", str(params), "--params-file", "/P/launch_params_talk_1.yaml",
        "-r", "chatter:=/global_chatter"]
    # name and namespace known: launch_ros keys the generated file by the full node name.
    assert node.parameters[1].generated == {"/robot/talk": {"ros__parameters": {"rate": 5.0}}}
    node.write_generated(tmp_path)
    written = yaml.safe_load((tmp_path / "launch_params_talk_1.yaml").read_text())
    assert written == {"/robot/talk": {"ros__parameters": {"rate": 5.0}}}


def test_bare_node_gets_only_the_trailing_ros_args(tmp_path, env):
    node, = plan_of(tmp_path, env, '<node pkg="demo" exec="talker"/>').nodes
    assert node.command() == [exe(env), "--ros-args"]
    assert node.label == "talker" and node.name is None and node.namespace is None


def test_parameter_values_are_typed_like_launch_ros_and_keyed_by_wildcard(tmp_path, env):
    node, = plan_of(tmp_path, env, """
      <node pkg="demo" exec="talker">
        <param name="i" value="3"/><param name="f" value="1.5"/><param name="b" value="true"/>
        <param name="s" value="fr3"/><param name="e" value=""/><param name="l" value="[1, 2]"/>
        <param name="outer"><param name="inner" value="x"/></param>
      </node>""").nodes
    values = {}
    for source in node.parameters:
        key, = source.generated  # no name given: launch_ros uses the /** wildcard
        assert key == "/**"
        values.update(source.generated[key]["ros__parameters"])
    assert values == {"i": 3, "f": 1.5, "b": True, "s": "fr3", "e": "", "l": [1, 2],
                      "outer.inner": "x"}


def test_args_split_on_spaces_but_never_inside_a_substitution(tmp_path, env):
    node, = plan_of(tmp_path, env, """
      <let name="file" value="/my dir/conf.rviz"/>
      <node pkg="demo" exec="talker" args="-d $(var file) -f x$(var file)y"/>""").nodes
    assert node.arguments == ["-d", "/my dir/conf.rviz", "-f", "x/my dir/conf.rvizy"]


def test_duplicate_labels_are_numbered_and_env_children_apply(tmp_path, env):
    plan = plan_of(tmp_path, env, """
      <node pkg="demo" exec="talker"><env name="A" value="1"/></node>
      <node pkg="demo" exec="talker" on_exit="shutdown" respawn="true" respawn_delay="2"/>""")
    first, second = plan.nodes
    assert (first.label, second.label) == ("talker", "talker-2")
    assert first.env == {"A": "1"} and not first.required and not first.respawn
    assert second.required and second.respawn and second.respawn_delay == 2.0


# --- substitutions ----------------------------------------------------------------------------
def test_substitutions_var_env_find_pkg_share_dirname_eval(tmp_path, env):
    plan = plan_of(tmp_path, env, """
      <arg name="robot" default="fr3" description="d"/>
      <let name="a" value="$(var robot)-$(env HOME_DIR)-$(env NOPE fallback)"/>
      <let name="b" value="$(find-pkg-share demo)/config"/>
      <let name="c" value="$(dirname)"/>
      <let name="d" value="$(eval &quot;'$(var robot)' == 'fr3'&quot;)"/>
      <let name="e" value="$(eval '\\'$(var robot)\\' in (\\'x\\', \\'y\\')')"/>
      <let name="f" value="it's \\$(var robot)"/>""")
    configs = plan.configurations
    assert configs["a"] == "fr3-/home/me-fallback"
    assert configs["b"] == f"{env['AMENT_PREFIX_PATH']}/share/demo/config"
    assert configs["c"] == str(tmp_path.resolve())
    assert configs["d"] == "True" and configs["e"] == "False"
    assert configs["f"] == "it's $(var robot)"


@pytest.mark.parametrize("text, message", [
    ("$(command ls)", "unsupported substitution $(command"),
    ("$(optenv X y)", "unsupported substitution $(optenv"),
    ("$(var)", "expected 1 argument(s), got 0"),
    ("$(var a  b)", "empty argument"),
    ("$(var a", "expected ' ' or ')'"),
    ("$(var 'a)", "unterminated ' string"),
    ("$(env NOPE)", "environment variable 'NOPE' is not set"),
    ("$(var missing)", "launch configuration 'missing' is not set"),
    ("$(find-pkg-share nopkg)", "package 'nopkg' not found in AMENT_PREFIX_PATH"),
    ("$(eval \"__import__('os').getcwd()\")", "Call is not supported"),
    ("$(eval \"1 +\")", "not a Python expression"),
    ("$(eval __import__('os'))", "unexpected '(' in an unquoted argument"),
])
def test_bad_substitutions_are_rejected_with_the_construct(tmp_path, env, text, message):
    text = text.replace("'", "&apos;").replace('"', "&quot;")
    error = rejected(tmp_path, env, f'<let name="x" value="{text}"/>')
    assert message in error
    assert "t.launch.xml:2: <let>" in error  # file and line


def test_substitution_parser_keeps_quoted_arguments_whole():
    parsed = substitutions.parse("a$(env 'X Y' \"d $(var q)\")b")
    assert parsed[0] == "a" and parsed[2] == "b"
    sub = parsed[1]
    assert sub.name == "env" and sub.args[0] == ("X Y",)
    assert sub.args[1][0] == "d " and sub.args[1][1].name == "var"


def test_condition_values_follow_launch():
    assert substitutions.condition("True") and substitutions.condition("1")
    assert not substitutions.condition("FALSE") and not substitutions.condition("0")
    with pytest.raises(substitutions.SubstitutionError, match="not one of"):
        substitutions.condition("yes")


# --- arguments --------------------------------------------------------------------------------
ARGS = """
  <arg name="robot" default="fr3" description="which robot">
    <choice value="fr3"/><choice value="stretch"/>
  </arg>
  <arg name="bag" description="bag to play"/>
  <node pkg="demo" exec="talker" name="$(var robot)_node"/>"""


def test_command_line_arguments_override_defaults(tmp_path, env):
    plan = plan_of(tmp_path, env, ARGS, {"robot": "stretch", "bag": "b"})
    assert plan.nodes[0].name == "stretch_node"
    assert plan.configurations["bag"] == "b"
    assert list(plan.arguments) == ["robot", "bag"]
    assert "robot:=stretch  # which robot (one of fr3, stretch)" in plan.describe()


def test_missing_required_argument_is_an_error(tmp_path, env):
    error = rejected(tmp_path, env, ARGS)
    assert "required launch argument 'bag' (bag to play) was not provided: pass bag:=VALUE" \
        in error and "t.launch.xml:6: <arg>" in error


def test_undeclared_argument_is_an_error(tmp_path, env):
    error = rejected(tmp_path, env, ARGS, {"bag": "b", "robt": "fr3"})
    assert "argument(s) robt not declared" in error and "declared: bag, robot" in error


def test_argument_outside_its_choices_is_an_error(tmp_path, env):
    error = rejected(tmp_path, env, ARGS, {"bag": "b", "robot": "ur5"})
    assert "argument 'robot' got 'ur5'; valid choices are fr3, stretch" in error


def test_cli_argument_tokens():
    assert description.parse_cli_arguments(["a:=1", "b:=x:=y", "c:="]) == \
        {"a": "1", "b": "x:=y", "c": ""}
    with pytest.raises(LaunchError, match="name:=value"):
        description.parse_cli_arguments(["a=1"])


# --- scopes, namespaces, conditions -------------------------------------------------------------
def test_groups_scope_configurations_and_namespaces(tmp_path, env):
    plan = plan_of(tmp_path, env, """
      <let name="v" value="outer"/>
      <group>
        <push-ros-namespace namespace="robot"/>
        <let name="v" value="inner"/>
        <node pkg="demo" exec="talker" name="a"/>
        <node pkg="demo" exec="talker" name="b" namespace="arm"/>
        <node pkg="demo" exec="talker" name="c" namespace="/abs"/>
        <group>
          <push_ros_namespace namespace="sub"/>
          <node pkg="demo" exec="talker" name="d" namespace=""/>
        </group>
        <node pkg="demo" exec="talker" name="e_$(var v)"/>
      </group>
      <group scoped="false"><let name="leaked" value="yes"/></group>
      <node pkg="demo" exec="talker" name="f_$(var v)" namespace=""/>
      <node pkg="demo" exec="talker" name="g"/>""")
    spaces = {n.name: n.namespace for n in plan.nodes}
    assert spaces == {"a": "/robot", "b": "/robot/arm", "c": "/abs", "d": "/robot/sub",
                      "e_inner": "/robot", "f_outer": "/", "g": None}
    assert plan.configurations["leaked"] == "yes" and plan.configurations["v"] == "outer"
    assert plan.nodes[3].full_name == "/robot/sub/d"


def test_if_and_unless_on_every_action(tmp_path, env):
    plan = plan_of(tmp_path, env, """
      <arg name="on" default="false" description="d"/>
      <let name="x" value="set" if="$(var on)"/>
      <let name="x" value="unset" unless="$(var on)"/>
      <node pkg="demo" exec="talker" name="n1" if="$(var on)"/>
      <node pkg="demo" exec="talker" name="n2" unless="$(var on)"/>
      <group if="$(var on)"><arg name="hidden" default="1" description="d"/></group>
      <include file="/nonexistent.launch.xml" if="$(var on)"/>""", {"hidden": "2"})
    assert [n.name for n in plan.nodes] == ["n2"]
    assert plan.configurations["x"] == "unset"
    assert "hidden" in plan.arguments  # declared in a skipped group: still a known argument


def test_if_with_a_non_boolean_and_if_with_unless_are_errors(tmp_path, env):
    assert "is not one of true, false, 1, 0" in rejected(
        tmp_path, env, '<node pkg="demo" exec="talker" if="maybe"/>')
    assert "'if' and 'unless' cannot both be given" in rejected(
        tmp_path, env, '<node pkg="demo" exec="talker" if="true" unless="true"/>')


# --- includes --------------------------------------------------------------------------------
def test_include_passes_arguments_and_leaks_like_launch(tmp_path, env):
    write(tmp_path, "inner.launch.xml", """
      <arg name="who" description="node name"/>
      <let name="from_inner" value="$(var who)"/>
      <node pkg="demo" exec="listener" name="$(var who)"/>""")
    plan = plan_of(tmp_path, env, """
      <group>
        <push-ros-namespace namespace="g"/>
        <include file="$(dirname)/inner.launch.xml"><arg name="who" value="alice"/></include>
      </group>
      <include file="$(dirname)/inner.launch.xml"><arg name="who" value="bob"/></include>
      <node pkg="demo" exec="talker" name="t_$(var from_inner)"/>""")
    assert [(n.name, n.namespace) for n in plan.nodes] == [
        ("alice", "/g"), ("bob", None), ("t_bob", None)]
    assert len(plan.files) == 3


def test_include_errors(tmp_path, env):
    write(tmp_path, "needs.launch.xml", '<arg name="x" description="needed"/>')
    assert "required launch argument 'x' (needed) was not provided" in rejected(
        tmp_path, env, '<include file="$(dirname)/needs.launch.xml"/>')
    assert "is relative" in rejected(tmp_path, env, '<include file="needs.launch.xml"/>')
    assert "does not exist" in rejected(tmp_path, env, '<include file="/no/such.launch.xml"/>')
    assert "only XML launch files" in rejected(tmp_path, env, '<include file="/x/a.launch.py"/>')
    loop = write(tmp_path, "loop.launch.xml", '<include file="$(filename)"/>')
    with pytest.raises(LaunchError, match="nested deeper than"):
        load(loop, environ=env)


# --- rejections ------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('<timer period="1"/>', "unsupported element <timer> inside <launch>"),
    ('<node pkg="demo" exec="talker" launch-prefix="gdb"/>',
     "unsupported attribute(s) launch-prefix"),
    ('<node pkg="demo" exec="talker"><param name="a" value="1" type="str"/></node>',
     "unsupported attribute(s) type"),
    ('<node pkg="demo" exec="talker"><composable_node/></node>',
     "unsupported element <composable_node> inside <node>"),
    ('<node pkg="demo" exec="talker" on_exit="restart"/>', "only 'shutdown' is supported"),
    ('<node pkg="demo" exec="talker" output="file"/>', "expected screen, log or both"),
    ('<node exec="talker"/>', "missing required attribute 'pkg'"),
    ('<node pkg="demo"/>', "missing required attribute 'exec'"),
    ('<node pkg="demo" exec="nope"/>', "executable 'nope' not found in package 'demo'"),
    ('<node pkg="ghost" exec="x"/>', "package 'ghost' not found"),
    ('<node pkg="demo" exec="talker" name="bad-name"/>', "invalid node name 'bad-name'"),
    ('<node pkg="demo" exec="talker" namespace="9lives"/>', "invalid namespace '/9lives'"),
    ('<node pkg="demo" exec="talker" respawn_delay="-1"/>', "must be a non-negative number"),
    ('<node pkg="demo" exec="talker"><param from="/no/file.yaml"/></node>',
     "parameter file /no/file.yaml does not exist"),
    ('<node pkg="demo" exec="talker"><param value="1"/></node>', "needs a 'name' or a 'from'"),
    ('<node pkg="demo" exec="talker"><param name="a"/></node>', "needs either a value"),
    ('<node pkg="demo" exec="talker"><remap from="a"/></node>', "missing required attribute 'to'"),
    ('<arg name="a" value="1"/>', "unsupported attribute(s) value"),
    ('<arg default="1"/>', "missing required attribute 'name'"),
    ('<let name="a"/>', "missing required attribute 'value'"),
    ('<group ns="x"/>', "unsupported attribute(s) ns"),
    ('<push-ros-namespace namespace="a b"/>', "invalid namespace '/a b'"),
    ('<include file="/x.launch.xml"><let name="a" value="1"/></include>',
     "unsupported element <let> inside <include>"),
])
def test_unsupported_constructs_are_rejected_with_file_line_and_construct(tmp_path, env, body,
                                                                            message):
    error = rejected(tmp_path, env, body)
    assert message in error
    assert "t.launch.xml:2" in error


def test_text_content_is_rejected(tmp_path, env):
    assert "t.launch.xml:1: <launch>: unexpected text content" in rejected(
        tmp_path, env, "stray text")


def test_malformed_xml_and_wrong_root(tmp_path, env):
    bad = tmp_path / "bad.launch.xml"
    bad.write_text("<launch>\n  <node pkg='demo'\n</launch>\n")
    with pytest.raises(LaunchError, match=r"bad.launch.xml:3: malformed XML"):
        load(bad, environ=env)
    other = tmp_path / "other.launch.xml"
    other.write_text("<roslaunch/>\n")
    with pytest.raises(LaunchError, match=r"root element is <roslaunch>, expected <launch>"):
        load(other, environ=env)


# --- finding files like ros2 launch -----------------------------------------------------------
def test_package_and_file_name_resolve_like_ros2_launch(tmp_path, env):
    share = Path(env["AMENT_PREFIX_PATH"]) / "share" / "demo" / "launch"
    share.mkdir(parents=True)
    target = write(share, "x.launch.xml", '<node pkg="demo" exec="talker"/>')
    found = description.find_launch_file("demo", "x.launch.xml", env)
    assert found == target
    with pytest.raises(LaunchError, match="not found in the share directory"):
        description.find_launch_file("demo", "y.launch.xml", env)
    assert command.resolve(str(target), ["a:=1"]) == (target, ["a:=1"])
    with pytest.raises(LaunchError, match="does not exist"):
        command.resolve("missing.launch.xml", [])


def test_launching_package_imports_no_ros():
    """The runner must work where launch, launch_ros and rclpy are absent."""
    for path in sorted((ROOT / "failrecov_ros" / "launching").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in {"rclpy", "launch", "launch_ros", "ament_index_python"}, name
                assert not top.endswith("_msgs"), name
                assert not name.startswith(("failrecov_ros.msg", "failrecov_ros.ros",
                                            "failrecov_ros.nodes")), name
    blocker = ("import sys\nclass B:\n    def find_spec(self, n, p=None, t=None):\n"
               "        if n.split('.')[0] in ('rclpy', 'ament_index_python'):\n"
               "            raise ImportError(n)\nsys.meta_path.insert(0, B())\n"
               "import failrecov_ros.launching.command\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
