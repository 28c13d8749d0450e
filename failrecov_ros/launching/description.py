"""Parse and evaluate a documented subset of the ROS 2 XML launch frontend into a plan.

The plan is a list of node processes with the exact command lines launch_ros builds
(``exe [args] [--ros-args ros_args] --ros-args -r __node:=N -r __ns:=/NS --params-file F ...
-r FROM:=TO``), so a launch file behaves the same under ``ros2 launch`` and under our runner.
Supported, with launch's semantics: ``<launch>``, ``<arg>`` (+ ``<choice>``), ``<let>``,
``<node>`` (+ ``<param>``, ``<remap>``, ``<env>``), ``<group>`` (scoped),
``<push-ros-namespace>``, ``<include>`` (+ ``<arg>``), ``if``/``unless`` on every action, and
the substitutions of :mod:`.substitutions`. Anything else is rejected with the file, line and
construct, never ignored. Stricter than launch on purpose: an argument given on the command
line that no visited file declares, a missing parameter file and a missing executable are
errors (launch warns or fails later).
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from failrecov_ros.launching import substitutions as subst

MAX_INCLUDE_DEPTH = 32
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAMESPACE_RE = re.compile(r"/|(/[A-Za-z_][A-Za-z0-9_]*)+")
_ACTION_CONDITIONS = ("if", "unless")
# Node attributes accepted, as launch_ros/launch name them (ExecuteProcess + Node.parse).
NODE_ATTRIBUTES = ("pkg", "exec", "name", "namespace", "exec_name", "args", "ros_args",
                   "output", "respawn", "respawn_delay", "on_exit", "sigterm_timeout",
                   "sigkill_timeout", *_ACTION_CONDITIONS)
ELEMENTS = ("arg", "let", "node", "group", "push-ros-namespace", "push_ros_namespace",
            "include")


class LaunchError(Exception):
    """A launch file that cannot be run; the message names file, line and construct."""


# --- ament index (no ament_index_python: this package stays importable without ROS) ---------
def find_package_prefix(package: str, environ: Mapping[str, str] | None = None) -> Path:
    """The install prefix of ``package``: the first AMENT_PREFIX_PATH entry that registers it."""
    environ = os.environ if environ is None else environ
    for prefix in filter(None, environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        marker = Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / package
        if marker.is_file():
            return Path(prefix)
    raise subst.SubstitutionError(f"package {package!r} not found in AMENT_PREFIX_PATH "
                                  "(is it built and its workspace sourced?)")


# --- the plan ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArgumentSpec:
    """A declared ``<arg>``: what ``--print`` and error messages show."""

    name: str
    default: str | None
    description: str
    choices: tuple[str, ...]
    file: str


@dataclasses.dataclass(frozen=True)
class ParameterSource:
    """One ``<param>`` of a node: a YAML file, or values launch_ros writes to a temporary file."""

    file: str | None = None
    generated: dict | None = None  # {node key: {"ros__parameters": {name: value}}}


@dataclasses.dataclass
class NodeProcess:
    """One node to start, with everything needed to build its command line."""

    label: str  # output prefix and process name ("[label] ...")
    package: str
    executable: str
    path: str
    name: str | None
    namespace: str | None  # absolute, or None when neither the node nor a group sets one
    arguments: list[str]
    ros_arguments: list[str]
    parameters: list[ParameterSource]
    remappings: list[tuple[str, str]]
    env: dict[str, str]
    output: str
    respawn: bool
    respawn_delay: float
    required: bool  # on_exit="shutdown": its exit ends the launch
    sigterm_timeout: float
    sigkill_timeout: float
    origin: str  # file:line

    @property
    def full_name(self) -> str | None:
        """``/ns/name`` once both are known (what launch_ros keys generated parameters by)."""
        if self.name is None or self.namespace is None:
            return None
        return ("" if self.namespace == "/" else self.namespace) + "/" + self.name

    def generated_file_name(self, index: int) -> str:
        """File name of the ``index``-th generated parameter file of this node."""
        return f"launch_params_{self.label}_{index}.yaml"

    def command(self, params_dir: str | os.PathLike = "") -> list[str]:
        """The command line launch_ros builds; generated parameter files live in params_dir."""
        cmd = [self.path, *self.arguments]
        if self.ros_arguments:
            cmd += ["--ros-args", *self.ros_arguments]
        cmd.append("--ros-args")
        if self.name is not None:
            cmd += ["-r", f"__node:={self.name}"]
        if self.namespace is not None:
            cmd += ["-r", f"__ns:={self.namespace}"]
        for index, source in enumerate(self.parameters):
            path = source.file or os.path.join(params_dir, self.generated_file_name(index))
            cmd += ["--params-file", path]
        for old, new in self.remappings:
            cmd += ["-r", f"{old}:={new}"]
        return cmd

    def write_generated(self, params_dir: str | os.PathLike) -> None:
        """Write this node's generated parameter files into params_dir."""
        for index, source in enumerate(self.parameters):
            if source.generated is not None:
                path = Path(params_dir) / self.generated_file_name(index)
                path.write_text(yaml.safe_dump(source.generated, default_flow_style=False))


@dataclasses.dataclass
class LaunchPlan:
    """What a launch file evaluates to with given arguments."""

    file: str
    arguments: dict[str, ArgumentSpec]
    configurations: dict[str, str]  # the top level's launch configurations at the end
    nodes: list[NodeProcess]
    files: list[str]  # every launch file read, in order

    def describe(self) -> str:
        """A human-readable plan (``failrecov launch --print``)."""
        lines = [f"launch file: {self.file}", "arguments:"]
        for spec in self.arguments.values():
            value = self.configurations.get(spec.name, "<not set>")
            choices = f" (one of {', '.join(spec.choices)})" if spec.choices else ""
            lines.append(f"  {spec.name}:={value}  # {spec.description}{choices}")
        lines.append(f"nodes ({len(self.nodes)}):")
        for node in self.nodes:
            flags = ", ".join(f for f, on in (("required", node.required),
                                              ("respawn", node.respawn)) if on)
            lines.append(f"  [{node.label}] {node.package}/{node.executable}"
                         + (f" ({flags})" if flags else "") + f"  from {node.origin}")
            lines.append("    " + " ".join(_quote(a) for a in node.command("<params_dir>")))
            for index, source in enumerate(node.parameters):
                if source.generated is not None:
                    text = yaml.safe_dump(source.generated, default_flow_style=True).strip()
                    lines.append(f"    <params_dir>/{node.generated_file_name(index)}: {text}")
            for key, value in node.env.items():
                lines.append(f"    env {key}={value}")
        return "\n".join(lines)


def _quote(arg: str) -> str:
    return arg if arg and re.fullmatch(r"[\w@%+=:,./<>-]+", arg) else repr(arg)


# --- XML with line numbers (xml.etree elements built from expat events) ---------------------
class _Element(ET.Element):
    line = 0


def _read_xml(path: Path) -> _Element:
    builder = ET.TreeBuilder(element_factory=_Element)
    parser = xml.parsers.expat.ParserCreate()

    def start(tag, attrs):
        element = builder.start(tag, attrs)
        element.line = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(path.read_bytes(), True)
    except xml.parsers.expat.ExpatError as exc:
        raise LaunchError(f"{path}:{exc.lineno}: malformed XML: "
                          f"{xml.parsers.expat.ErrorString(exc.code)}") from None
    except OSError as exc:
        raise LaunchError(f"cannot read launch file {path}: {exc.strerror}") from None
    return builder.close()


# --- evaluation ------------------------------------------------------------------------------
class _Loader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.nodes: list[NodeProcess] = []
        self.files: list[str] = []
        self.declared: dict[str, ArgumentSpec] = {}
        self.labels: set[str] = set()

    # helpers
    def where(self, path: Path, element: _Element) -> str:
        return f"{path}:{element.line}"

    def fail(self, path: Path, element: _Element, message: str) -> LaunchError:
        return LaunchError(f"{self.where(path, element)}: <{element.tag}>: {message}")

    def context(self, path: Path, configs: dict[str, str]) -> subst.Context:
        return subst.Context(configs, path,
                             lambda pkg: find_package_prefix(pkg, self.environ), self.environ)

    def value(self, path: Path, element: _Element, configs: dict[str, str], attribute: str,
              default: str | None = None, required: bool = False) -> str | None:
        raw = element.get(attribute)
        if raw is None:
            if required:
                raise self.fail(path, element, f"missing required attribute {attribute!r}")
            return default
        try:
            return subst.substitute(raw, self.context(path, configs))
        except subst.SubstitutionError as exc:
            raise self.fail(path, element, f"attribute {attribute}={raw!r}: {exc}") from None

    def check(self, path: Path, element: _Element, allowed: Iterable[str],
              children: Iterable[str] = ()) -> None:
        unknown = sorted(set(element.attrib) - set(allowed))
        if unknown:
            raise self.fail(path, element, f"unsupported attribute(s) {', '.join(unknown)} "
                            f"(supported here: {', '.join(allowed) or 'none'})")
        for child in element:
            if child.tag not in children:
                raise LaunchError(f"{self.where(path, child)}: unsupported element "
                                  f"<{child.tag}> inside <{element.tag}> (supported here: "
                                  f"{', '.join(f'<{c}>' for c in children) or 'none'})")
        if (element.text or "").strip() or any((c.tail or "").strip() for c in element):
            raise self.fail(path, element, "unexpected text content")

    def flag(self, path: Path, element: _Element, configs: dict[str, str], attribute: str,
             default: bool) -> bool:
        text = self.value(path, element, configs, attribute)
        if text is None:
            return default
        try:
            return subst.condition(text)
        except subst.SubstitutionError as exc:
            raise self.fail(path, element, f"attribute {attribute}: {exc}") from None

    def number(self, path: Path, element: _Element, configs: dict[str, str], attribute: str,
               default: float) -> float:
        text = self.value(path, element, configs, attribute)
        if text is None:
            return default
        try:
            number = float(text)
        except ValueError:
            number = -1.0
        if not number >= 0.0:
            raise self.fail(path, element, f"attribute {attribute}={text!r} must be a "
                            "non-negative number")
        return number

    def enabled(self, path: Path, element: _Element, configs: dict[str, str]) -> bool:
        if "if" in element.attrib and "unless" in element.attrib:
            raise self.fail(path, element, "'if' and 'unless' cannot both be given")
        if "if" in element.attrib:
            return self.flag(path, element, configs, "if", True)
        if "unless" in element.attrib:
            return not self.flag(path, element, configs, "unless", False)
        return True

    # files and actions
    def load_file(self, path: Path, configs: dict[str, str], depth: int) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise LaunchError(f"{path}: includes nested deeper than {MAX_INCLUDE_DEPTH} "
                              "(a file including itself?)")
        root = _read_xml(path)
        self.files.append(str(path))
        if root.tag != "launch":
            raise LaunchError(f"{path}:{root.line}: root element is <{root.tag}>, "
                              "expected <launch> (only XML launch files are supported)")
        self.check(path, root, (), ELEMENTS)
        self.actions(path, root, configs, depth)

    def actions(self, path: Path, parent: _Element, configs: dict[str, str], depth: int) -> None:
        for element in parent:
            handler = {"arg": self.arg, "let": self.let, "node": self.node,
                       "group": self.group, "push-ros-namespace": self.push_namespace,
                       "push_ros_namespace": self.push_namespace,
                       "include": self.include}[element.tag]
            handler(path, element, configs, depth)

    def arg(self, path, element, configs, depth) -> None:
        self.check(path, element, ("name", "default", "description", *_ACTION_CONDITIONS),
                   ("choice",))
        for choice in element:
            self.check(path, choice, ("value",))
            if choice.get("value") is None:
                raise self.fail(path, choice, "missing required attribute 'value'")
        name = element.get("name")
        if not name:
            raise self.fail(path, element, "missing required attribute 'name'")
        choices = tuple(c.get("value") for c in element)
        self.declared.setdefault(name, ArgumentSpec(name, element.get("default"),
                                                    element.get("description", ""), choices,
                                                    str(path)))
        if not self.enabled(path, element, configs):
            return
        if name not in configs:
            default = self.value(path, element, configs, "default")
            if default is None:
                description = element.get("description", "no description given")
                raise self.fail(path, element, f"required launch argument {name!r} "
                                f"({description}) was not provided: pass {name}:=VALUE")
            configs[name] = default
        if choices and configs[name] not in choices:
            raise self.fail(path, element, f"argument {name!r} got {configs[name]!r}; "
                            f"valid choices are {', '.join(choices)}")

    def let(self, path, element, configs, depth) -> None:
        self.check(path, element, ("name", "value", *_ACTION_CONDITIONS))
        if self.enabled(path, element, configs):
            name = self.value(path, element, configs, "name", required=True)
            configs[name] = self.value(path, element, configs, "value", required=True)

    def group(self, path, element, configs, depth) -> None:
        self.check(path, element, ("scoped", *_ACTION_CONDITIONS), ELEMENTS)
        if not self.enabled(path, element, configs):
            self.declare_skipped(path, element)
            return
        if self.flag(path, element, configs, "scoped", True):
            self.actions(path, element, dict(configs), depth)
        else:
            self.actions(path, element, configs, depth)

    def declare_skipped(self, path: Path, element: _Element) -> None:
        """Arguments declared in a skipped group still count as declared (launch lists them)."""
        for child in element.iter("arg"):
            if child.get("name") and child.get("value") is None:
                self.declared.setdefault(child.get("name"), ArgumentSpec(
                    child.get("name"), child.get("default"), child.get("description", ""),
                    tuple(c.get("value") for c in child), str(path)))

    def push_namespace(self, path, element, configs, depth) -> None:
        self.check(path, element, ("namespace", *_ACTION_CONDITIONS))
        if not self.enabled(path, element, configs):
            return
        pushed = self.value(path, element, configs, "namespace", required=True)
        namespace = _absolute(_prefix_namespace(configs.get("ros_namespace"), pushed))
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise self.fail(path, element, f"invalid namespace {namespace!r}")
        configs["ros_namespace"] = namespace

    def include(self, path, element, configs, depth) -> None:
        self.check(path, element, ("file", *_ACTION_CONDITIONS), ("arg",))
        for child in element:
            self.check(path, child, ("name", "value"))
        if not self.enabled(path, element, configs):
            return
        target = Path(self.value(path, element, configs, "file", required=True))
        if not target.is_absolute():
            raise self.fail(path, element, f"file {str(target)!r} is relative; use "
                            "$(find-pkg-share PKG)/... or $(dirname)/...")
        if not target.name.endswith(".xml"):
            raise self.fail(path, element, f"{target.name}: only XML launch files can be "
                            "included by this runner")
        if not target.is_file():
            raise self.fail(path, element, f"included file {target} does not exist")
        # Like launch's IncludeLaunchDescription: the arguments become launch configurations
        # of the including scope (wrap the include in a <group> to keep them local).
        for child in element:
            name = self.value(path, child, configs, "name", required=True)
            configs[name] = self.value(path, child, configs, "value", required=True)
        self.load_file(target, configs, depth + 1)

    def node(self, path, element, configs, depth) -> None:
        self.check(path, element, NODE_ATTRIBUTES, ("param", "remap", "env"))
        if not self.enabled(path, element, configs):
            return
        get = lambda attribute, **kw: self.value(path, element, configs, attribute, **kw)  # noqa: E731
        package = get("pkg")
        if package is None:
            raise self.fail(path, element, "missing required attribute 'pkg' (this runner "
                            "starts package executables only)")
        executable = get("exec", required=True)
        try:
            prefix = find_package_prefix(package, self.environ)
        except subst.SubstitutionError as exc:
            raise self.fail(path, element, str(exc)) from None
        exe_path = prefix / "lib" / package / executable
        if not (exe_path.is_file() and os.access(exe_path, os.X_OK)):
            raise self.fail(path, element, f"executable {executable!r} not found in package "
                            f"{package!r} (looked for {exe_path})")
        name = get("name")
        if name is not None and not _NAME_RE.fullmatch(name):
            raise self.fail(path, element, f"invalid node name {name!r}")
        namespace = _absolute(_prefix_namespace(configs.get("ros_namespace"), get("namespace")))
        if namespace is not None and not _NAMESPACE_RE.fullmatch(namespace):
            raise self.fail(path, element, f"invalid namespace {namespace!r}")
        on_exit = get("on_exit")
        if on_exit not in (None, "shutdown"):
            raise self.fail(path, element, f"on_exit={on_exit!r}: only 'shutdown' is "
                            "supported (as in launch's XML frontend)")
        output = get("output", default="log")
        if output not in ("screen", "log", "both"):
            raise self.fail(path, element, f"output={output!r}: expected screen, log or both")
        label = self.unique_label(get("exec_name") or name or executable)
        process = NodeProcess(
            label=label, package=package, executable=executable, path=str(exe_path), name=name,
            namespace=namespace, arguments=self.cmdline(path, element, configs, "args"),
            ros_arguments=self.cmdline(path, element, configs, "ros_args"), parameters=[],
            remappings=[], env={}, output=output,
            respawn=self.flag(path, element, configs, "respawn", False),
            respawn_delay=self.number(path, element, configs, "respawn_delay", 0.0),
            required=on_exit == "shutdown",
            sigterm_timeout=self.number(path, element, configs, "sigterm_timeout", 5.0),
            sigkill_timeout=self.number(path, element, configs, "sigkill_timeout", 5.0),
            origin=self.where(path, element))
        for child in element:
            if child.tag == "remap":
                self.check(path, child, ("from", "to"))
                process.remappings.append(
                    (self.value(path, child, configs, "from", required=True),
                     self.value(path, child, configs, "to", required=True)))
            elif child.tag == "env":
                self.check(path, child, ("name", "value"))
                process.env[self.value(path, child, configs, "name", required=True)] = \
                    self.value(path, child, configs, "value", required=True)
            else:
                process.parameters.append(self.parameter(path, child, configs, process))
        self.nodes.append(process)

    def cmdline(self, path, element, configs, attribute) -> list[str]:
        """Split args/ros_args as launch does: on spaces of the text, never inside a substitution.

        ``args="-d $(var file) -f x"`` is four arguments whatever the file name holds.
        """
        import shlex

        raw = element.get(attribute)
        if raw is None:
            return []
        context = self.context(path, configs)
        result: list[str] = []
        current: list[str] | None = None
        try:
            for part in subst.parse(raw):
                if not isinstance(part, str):
                    current = (current or []) + [subst.evaluate((part,), context)]
                    continue
                tokens = shlex.split(part)
                if part[:1].isspace() and current is not None:
                    result.append("".join(current))
                    current = None
                for index, token in enumerate(tokens):
                    if index > 0 and current is not None:
                        result.append("".join(current))
                        current = None
                    current = (current or []) + [token]
                if part[-1:].isspace() and current is not None:
                    result.append("".join(current))
                    current = None
        except (subst.SubstitutionError, ValueError) as exc:
            raise self.fail(path, element, f"attribute {attribute}={raw!r}: {exc}") from None
        if current is not None:
            result.append("".join(current))
        return result

    def unique_label(self, base: str) -> str:
        label, count = base, 1
        while label in self.labels:
            count += 1
            label = f"{base}-{count}"
        self.labels.add(label)
        return label

    def parameter(self, path, element, configs, process: NodeProcess) -> ParameterSource:
        if "from" in element.attrib:
            self.check(path, element, ("from",))
            source = self.value(path, element, configs, "from")
            if not Path(source).is_file():
                raise self.fail(path, element, f"parameter file {source} does not exist")
            return ParameterSource(file=source)
        values = self.parameter_values(path, element, configs)
        key = process.full_name or "/**"
        return ParameterSource(generated={key: {"ros__parameters": values}})

    def parameter_values(self, path, element, configs) -> dict:
        """``<param name value/>`` or nested ``<param name><param .../></param>``, flattened."""
        self.check(path, element, ("name", "value"), ("param",))
        name = self.value(path, element, configs, "name")
        if name is None:
            raise self.fail(path, element, "needs a 'name' or a 'from' attribute")
        has_value, nested = "value" in element.attrib, len(element) > 0
        if has_value == nested:
            raise self.fail(path, element, f"parameter {name!r} needs either a value "
                            "attribute or nested <param> elements")
        if has_value:
            return {name: _typed(self.value(path, element, configs, "value"))}
        flat = {}
        for child in element:
            for key, value in self.parameter_values(path, child, configs).items():
                flat[f"{name}.{key}"] = value
        return flat


def _typed(text: str):
    """A parameter value as launch_ros types it: YAML scalars and lists, else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value and all(
            isinstance(v, (bool, int, float, str)) for v in value):
        return value
    return text


def _prefix_namespace(base: str | None, namespace: str | None) -> str | None:
    """launch_ros's prefix_namespace: a relative namespace goes under the pushed one."""
    if base is None and namespace is None:
        return None
    if namespace is None:
        combined = base
    elif not base or namespace.startswith("/"):
        combined = namespace
    else:
        combined = ("" if base == "/" else base) + "/" + namespace
    return combined if combined == "/" else combined.rstrip("/")


def _absolute(namespace: str | None) -> str | None:
    if namespace is None:
        return None
    return namespace if namespace.startswith("/") else "/" + namespace


def parse_cli_arguments(tokens: Iterable[str]) -> dict[str, str]:
    """``name:=value`` tokens as ``ros2 launch`` takes them; anything else is an error."""
    arguments = {}
    for token in tokens:
        name, sep, value = token.partition(":=")
        if not sep or not name:
            raise LaunchError(f"launch arguments are name:=value, got {token!r}")
        arguments[name] = value
    return arguments


def load(file: str | os.PathLike, arguments: Mapping[str, str] | None = None,
         environ: Mapping[str, str] | None = None) -> LaunchPlan:
    """Evaluate a launch file with ``arguments`` (``name -> value``) into a plan.

    Raises :class:`LaunchError` for anything the runner cannot honour exactly.
    """
    path = Path(file).resolve()
    loader = _Loader(os.environ if environ is None else environ)
    configs = dict(arguments or {})
    loader.load_file(path, configs, 0)
    undeclared = sorted(set(arguments or {}) - set(loader.declared))
    if undeclared:
        known = ", ".join(sorted(loader.declared)) or "none"
        raise LaunchError(f"{path}: argument(s) {', '.join(undeclared)} not declared by the "
                          f"launch file (declared: {known})")
    return LaunchPlan(str(path), loader.declared, configs, loader.nodes, loader.files)


def find_launch_file(package: str, file_name: str,
                     environ: Mapping[str, str] | None = None) -> Path:
    """``ros2 launch PKG FILE``: the file of that name anywhere under the package's share."""
    try:
        share = find_package_prefix(package, environ) / "share" / package
    except subst.SubstitutionError as exc:
        raise LaunchError(str(exc)) from None
    matches = sorted(p for p in share.rglob(file_name) if p.is_file())
    if not matches:
        raise LaunchError(f"file {file_name!r} not found in the share directory of "
                          f"{package!r} ({share})")
    if len(matches) > 1:
        raise LaunchError(f"file {file_name!r} is ambiguous in {share}: "
                          + ", ".join(str(m) for m in matches))
    return matches[0]
