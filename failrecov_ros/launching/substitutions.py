"""The substitution language of the launch frontend: ``$(name arg ...)`` inside attributes.

Follows ros2/launch's grammar (``launch/frontend/grammar.lark``): arguments are separated by
one space, an argument is either unquoted (no spaces, quotes or parentheses) or a single- or
double-quoted string that may contain spaces and nested substitutions, and a backslash escapes
the next character. Only the substitutions listed in ``SUPPORTED`` are accepted; anything
else is an error, not a silent literal.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

SUPPORTED = ("var", "env", "find-pkg-share", "find-pkg-prefix", "dirname", "filename", "eval")


class SubstitutionError(ValueError):
    """A substitution that cannot be parsed or evaluated (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Substitution:
    """``$(name args...)``; every argument is itself a template."""

    name: str
    args: tuple[tuple, ...]


Template = tuple  # of str and Substitution parts


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def error(self, what: str) -> SubstitutionError:
        return SubstitutionError(f"bad substitution syntax in {self.text!r} at column "
                                 f"{self.i + 1}: {what}")

    def peek(self, n: int = 1) -> str:
        return self.text[self.i:self.i + n]

    def template(self) -> Template:
        parts: list = []
        while self.i < len(self.text):
            if self.peek(2) == "$(":
                parts.append(self.substitution())
            elif self.peek() == "\\" and self.i + 1 < len(self.text):
                parts.append(self.text[self.i + 1])
                self.i += 2
            else:
                parts.append(self.peek())
                self.i += 1
        return _merge(parts)

    def substitution(self) -> Substitution:
        self.i += 2
        start = self.i
        while self.i < len(self.text) and (self.peek().isalnum() or self.peek() in "_-"):
            self.i += 1
        name = self.text[start:self.i]
        if not name or not name[0].isalpha():
            raise self.error("expected a substitution name after '$('")
        args = []
        while True:
            if self.peek() == ")":
                self.i += 1
                return Substitution(name, tuple(args))
            if self.peek() != " ":
                raise self.error(f"expected ' ' or ')' in $({name} ...)")
            self.i += 1
            args.append(self.value())

    def value(self) -> Template:
        quote = self.peek()
        parts: list = []
        if quote in ("'", '"'):
            self.i += 1
            while True:
                if self.i >= len(self.text):
                    raise self.error(f"unterminated {quote} string")
                char = self.peek()
                if char == quote:
                    self.i += 1
                    return _merge(parts)
                if self.peek(2) == "$(":
                    parts.append(self.substitution())
                elif char == "\\" and self.i + 1 < len(self.text):
                    parts.append(self.text[self.i + 1])
                    self.i += 2
                else:
                    parts.append(char)
                    self.i += 1
        while self.i < len(self.text) and self.peek() not in (" ", ")"):
            char = self.peek()
            if self.peek(2) == "$(":
                parts.append(self.substitution())
            elif char == "\\" and self.i + 1 < len(self.text):
                parts.append(self.text[self.i + 1])
                self.i += 2
            elif char in "'\"($":
                raise self.error(f"unexpected {char!r} in an unquoted argument")
            else:
                parts.append(char)
                self.i += 1
        if not parts:
            raise self.error("empty argument (arguments are separated by exactly one space)")
        return _merge(parts)


def _merge(parts: list) -> Template:
    merged: list = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)


def parse(text: str) -> Template:
    """Parse an attribute value into text and substitutions."""
    return _Parser(text).template()


@dataclasses.dataclass
class Context:
    """What substitutions read: launch configurations, the current file, packages, environ."""

    configurations: dict[str, str]
    current_file: Path
    find_package_prefix: Callable[[str], Path]
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)


def evaluate(template: Template, context: Context) -> str:
    """The string a parsed template stands for."""
    return "".join(p if isinstance(p, str) else _evaluate_one(p, context) for p in template)


def substitute(text: str, context: Context) -> str:
    """Parse and evaluate an attribute value."""
    return evaluate(parse(text), context)


def _evaluate_one(sub: Substitution, context: Context) -> str:
    args = [evaluate(a, context) for a in sub.args]
    shown = f"$({' '.join([sub.name, *args])})"

    def arity(low: int, high: int) -> None:
        if not low <= len(args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            raise SubstitutionError(f"{shown}: expected {expected} argument(s), got {len(args)}")

    if sub.name == "var":
        arity(1, 1)
        if args[0] not in context.configurations:
            raise SubstitutionError(f"{shown}: launch configuration {args[0]!r} is not set "
                                    "(declare it with <arg> or <let> first)")
        return context.configurations[args[0]]
    if sub.name == "env":
        arity(1, 2)
        if args[0] in context.environ:
            return context.environ[args[0]]
        if len(args) == 2:
            return args[1]
        raise SubstitutionError(f"{shown}: environment variable {args[0]!r} is not set "
                                "and no default was given")
    if sub.name in ("find-pkg-share", "find-pkg-prefix"):
        arity(1, 1)
        prefix = context.find_package_prefix(args[0])
        return str(prefix / "share" / args[0] if sub.name == "find-pkg-share" else prefix)
    if sub.name == "dirname":
        arity(0, 0)
        return str(context.current_file.parent)
    if sub.name == "filename":
        arity(0, 0)
        return str(context.current_file)
    if sub.name == "eval":
        arity(1, 1)
        return safe_eval(args[0])
    raise SubstitutionError(f"unsupported substitution $({sub.name} ...); this runner "
                            f"supports {', '.join(f'$({n})' for n in SUPPORTED)}")


_EVAL_NODES = (ast.Expression, ast.Constant, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.And,
               ast.Or, ast.Not, ast.USub, ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Tuple,
               ast.List, ast.Load)


def safe_eval(expression: str) -> str:
    """``$(eval ...)`` restricted to literals, ``==``, ``!=``, ``in``, ``and``, ``or``, ``not``.

    launch runs any Python expression; anything beyond this subset is rejected rather than
    executed, so a launch file cannot run code through the runner.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise SubstitutionError(f"$(eval {expression}): not a Python expression ({exc.msg})")\
            from None
    for node in ast.walk(tree):
        if not isinstance(node, _EVAL_NODES):
            raise SubstitutionError(
                f"$(eval {expression}): {type(node).__name__} is not supported; this runner "
                "evaluates only literals combined with ==, !=, in, not in, and, or, not")
    return str(eval(compile(tree, "<eval>", "eval"), {"__builtins__": {}}, {}))  # noqa: S307


def condition(value: str) -> bool:
    """Evaluate a condition as launch does: true/1 or false/0 in any case, else an error."""
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise SubstitutionError(f"condition value {value!r} is not one of true, false, 1, 0")
