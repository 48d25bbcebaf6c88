"""Load a profile file: YAML with source positions, `extends:` merging, validation.

Every problem becomes a UserError naming file:line:column, the key path and what is
accepted. Nothing else may escape from `load_profile` for any input (fuzzed in tests).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from synapse_os.errors import UserError
from synapse_os.profile.model import Profile

MAX_EXTENDS_DEPTH = 8
MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 20_000  # a profile has a few hundred values; bounds any YAML expansion
PROFILE_SUFFIXES = (".yaml", ".yml")
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    file: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only true/false, so `mitigations: off` stays a word."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct(node: yaml.Node, file: Path, path: KeyPath, marks: dict[KeyPath, Mark],
               seen: set[int]) -> Any:
    # yaml.compose shares one node between an anchor and its aliases: refusing a node met
    # twice refuses aliases, and with them exponential expansion ("billion laughs").
    if id(node) in seen:
        raise UserError(f"{_mark(file, node)}: YAML anchors and aliases (&name, *name) are not "
                        "accepted in a profile; write the value out")
    seen.add(id(node))
    if len(seen) > MAX_NODES:
        raise UserError(f"{file}: has more than {MAX_NODES} values; a profile is much smaller")
    marks[path] = Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                raise UserError(
                    f"{_mark(file, key_node)}: only plain scalar keys are accepted in a profile"
                )
            key = str(key_node.value)
            if key in out:
                raise UserError(f"{_mark(file, key_node)}: key {key!r} appears twice")
            out[key] = _construct(value_node, file, (*path, key), marks, seen)
            if not isinstance(value_node, yaml.ScalarNode):  # a block: point at its key
                marks[(*path, key)] = Mark(
                    file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
                )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, file, (*path, i), marks, seen) for i, v in enumerate(node.value)]
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _mark(file: Path, node: yaml.Node) -> str:
    return str(Mark(file, node.start_mark.line + 1, node.start_mark.column + 1))


def _read_text(file: Path) -> str:
    """The file's text; only a regular file of at most MAX_FILE_BYTES (never a FIFO, a
    device such as /dev/zero, or a directory), read without blocking on it."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{file}: no such profile file") from None
    except OSError as exc:
        raise UserError(f"{file}: cannot be read ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{file}: is a directory, expected a profile YAML file")
        raise UserError(f"{file}: is not a regular file; a profile is a YAML file")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise UserError(f"{file}: cannot be read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{file}: profile is larger than 1 MiB; is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file}: is not UTF-8 text; a profile is a YAML file") from None


def _read_yaml(file: Path, quote: bool = True) -> tuple[dict[str, Any], dict[KeyPath, Mark]]:
    """Parse a profile file. `quote=False` (a file reached through `extends:`, which may be
    any file a profile names): errors say where, never what the file contains."""
    text = _read_text(file)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        pos = f"{file}:{where.line + 1}:{where.column + 1}" if where else str(file)
        detail = f": {exc.problem or exc.context}" if quote else ""
        raise UserError(f"{pos}: YAML syntax error{detail}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{file}: YAML error" + (f": {exc}" if quote else "")) from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{file}: cannot be parsed as YAML ({type(exc).__name__})") from None
    if node is None:
        raise UserError(f"{file}: is empty; a profile starts with 'synapse: 1'")
    marks: dict[KeyPath, Mark] = {}
    try:
        data = _construct(node, file, (), marks, set())
    except yaml.YAMLError as exc:
        raise UserError(f"{file}: YAML error" + (f": {exc}" if quote else "")) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        detail = f" ({exc})" if quote else ""
        raise UserError(f"{file}: a value cannot be read{detail}") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{marks[()]}: the profile must be a mapping of keys (synapse:, name:, ...), "
            f"not a {type(data).__name__}"
        )
    return data, marks


def _merge(
    parent: dict[str, Any],
    child: dict[str, Any],
    parent_marks: dict[KeyPath, Mark],
    child_marks: dict[KeyPath, Mark],
    path: KeyPath = (),
) -> dict[str, Any]:
    """Deep-merge mappings; lists and scalars replace; a child `null` resets to default."""
    out = dict(parent)
    for key, value in child.items():
        sub = (*path, key)
        if value is None:
            out.pop(key, None)
            for p in [p for p in parent_marks if p[: len(sub)] == sub]:
                del parent_marks[p]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, parent_marks, child_marks, sub)
        else:
            out[key] = value
            for p in [p for p in parent_marks if p[: len(sub)] == sub]:
                del parent_marks[p]
    if not path:
        parent_marks.update({p: m for p, m in child_marks.items() if p not in parent_marks})
    return out


def _resolve(file: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[KeyPath, Mark]]:
    data, marks = _read_yaml(file, quote=not chain)
    if chain and "synapse" not in data and "extends" not in data:
        raise UserError(f"{file}: is not a synapse profile (no 'synapse: 1'); extends must "
                        "name another profile")
    extends = data.pop("extends", None)
    if extends is None:
        return data, marks
    if not isinstance(extends, str) or not extends.strip():
        raise UserError(f"{marks[('extends',)]}: extends must be a path to another profile")
    if not extends.endswith(PROFILE_SUFFIXES):
        raise UserError(f"{marks[('extends',)]}: extends must name a profile file ending in "
                        ".yaml or .yml")
    parent_file = (file.parent / extends).resolve()
    if parent_file in chain or parent_file == file.resolve():
        raise UserError(f"{marks[('extends',)]}: extends forms a cycle through {parent_file}")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise UserError(f"{marks[('extends',)]}: extends is nested deeper than {MAX_EXTENDS_DEPTH}")
    parent, parent_marks = _resolve(parent_file, (*chain, file.resolve()))
    child_marks = {p: m for p, m in marks.items() if p and p[0] != "extends"}
    merged = _merge(parent, data, parent_marks, child_marks)
    return merged, parent_marks


def _fields_at(loc: KeyPath) -> list[str]:
    """The field names accepted at `loc` (the parent of an unknown key)."""
    model: Any = Profile
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _nearest_mark(marks: dict[KeyPath, Mark], loc: KeyPath, file: Path) -> Mark:
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return Mark(file, 1, 1)


def _entry_mark(marks: dict[KeyPath, Mark], loc: KeyPath, msg: str) -> Mark | None:
    """An error about a free mapping (sysctl, kernel.extra) that names one of its keys points
    at that key's line (the entry may come from an extending file, the mapping from its
    base)."""
    if not loc or _fields_at(loc):
        return None
    named = [p for p in marks if len(p) == len(loc) + 1 and p[:len(loc)] == loc
             and isinstance(p[-1], str)
             and re.search(rf"(?<![\w.-]){re.escape(p[-1])}(?![\w.-])", msg)]
    return marks[max(named, key=lambda p: len(str(p[-1])))] if named else None


def _describe(error: Any, marks: dict[KeyPath, Mark], file: Path) -> str:
    # pydantic adds union-branch names ("function-after[...]", "int") to loc: drop them
    branch = re.compile(r"[\[\]]|^(int|str|float|bool|literal)")
    loc: KeyPath = tuple(p for p in error["loc"] if isinstance(p, int) or not branch.search(p))
    msg = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    # a cross-field rule naming its key
    named = re.match(r"^([a-z_]+(?:\.[a-z_]+)*): ", msg)
    if named and named.group(1).split(".")[0] in Profile.model_fields:
        loc = tuple(named.group(1).split("."))
        msg = msg[named.end():]
    key = ".".join(str(p) for p in loc) or "(top level)"
    mark = _entry_mark(marks, loc, msg) or _nearest_mark(marks, loc, file)
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"accepted keys: {', '.join(known)}"
        return f"{mark}: unknown key {key!r}; {hint}"
    if kind == "missing":
        return f"{mark}: required key {key!r} is missing"
    if kind == "literal_error":
        msg = msg.replace("Input should be", "accepted values are")
    return f"{mark}: {key}: {msg} (got {error.get('input')!r})" if kind != "value_error" else (
        f"{mark}: {key}: {msg}"
    )


def load_profile(path: str | Path) -> Profile:
    """Read, merge and validate a profile, or raise UserError with one clear sentence."""
    file = Path(path)
    data, marks = _resolve(file, ())
    if data.get("synapse") not in (1, None):
        where = marks.get(("synapse",), Mark(file, 1, 1))
        raise UserError(
            f"{where}: profile format version {data.get('synapse')!r} is not supported; "
            "this synapse reads 'synapse: 1'"
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0], marks, file)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise UserError(first + (more if len(errors) > 1 else "")) from None
    except (RecursionError, TypeError, ValueError) as exc:
        raise UserError(f"{file}: the profile cannot be validated ({exc})") from None
