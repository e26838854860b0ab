"""Safe, bounded YAML loading that remembers where every value came from.

Protocol files are untrusted input. The loader
- never constructs objects (only the YAML core types: mappings, sequences, str, int, float, bool, null),
- refuses documents larger than `MAX_BYTES`, nested deeper than `MAX_DEPTH`, with more than `MAX_NODES`
  nodes once aliases are expanded, or more than `MAX_ALIASES` alias references ("billion laughs"),
- refuses duplicate keys and non-text keys,
- returns, beside the data, a map from each value's path (("steps", 3, "gitt", "current")) to its
  (line, column), 1-based, so any later error can point into the file.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ProtocolError

MAX_BYTES = 1_000_000
MAX_DEPTH = 40
MAX_NODES = 100_000
MAX_ALIASES = 100

Path = tuple[str | int, ...]
Locations = dict[Path, tuple[int, int]]


try:  # libyaml's event parser when available (fast); the composer below is ours either way
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


class BoundedComposer:
    """Builds the node graph from parser events, counting nodes, nesting depth and aliases
    (PyYAML's own composer has no limits)."""

    def __init__(self, text: str, filename: str) -> None:
        self.loader = _Loader(text)
        self.filename = filename
        self.nodes = 0
        self.aliases = 0
        self.anchors: dict[str, Node] = {}

    def _refuse(self, message: str, mark) -> ProtocolError:
        line = mark.line + 1 if mark is not None else 1
        col = mark.column + 1 if mark is not None else 1
        return ProtocolError(message, self.filename, line, col)

    def single_node(self) -> Node | None:
        ld = self.loader
        ld.get_event()  # StreamStart
        if ld.check_event(yaml.StreamEndEvent):
            return None
        ld.get_event()  # DocumentStart
        node = self.compose(0)
        ld.get_event()  # DocumentEnd
        if not ld.check_event(yaml.StreamEndEvent):
            raise self._refuse("expected one YAML document, found more (remove the '---')",
                               ld.peek_event().start_mark)
        return node

    def compose(self, depth: int) -> Node:
        ld = self.loader
        event = ld.get_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self._refuse(f"too many YAML aliases (more than {MAX_ALIASES}); write the values out",
                                   event.start_mark)
            if event.anchor not in self.anchors:
                raise self._refuse(f"unknown YAML alias *{event.anchor}", event.start_mark)
            return self.anchors[event.anchor]
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self._refuse(f"document too large (more than {MAX_NODES} YAML nodes)", event.start_mark)
        if depth >= MAX_DEPTH:
            raise self._refuse(f"nesting too deep (more than {MAX_DEPTH} levels)", event.start_mark)
        node: Node
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = ld.resolve(ScalarNode, event.value, event.implicit)
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            return node
        if isinstance(event, yaml.SequenceStartEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = ld.resolve(SequenceNode, None, event.implicit)
            node = SequenceNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            while not ld.check_event(yaml.SequenceEndEvent):
                node.value.append(self.compose(depth + 1))
            node.end_mark = ld.get_event().end_mark
            return node
        if isinstance(event, yaml.MappingStartEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = ld.resolve(MappingNode, None, event.implicit)
            node = MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            while not ld.check_event(yaml.MappingEndEvent):
                key = self.compose(depth + 1)
                value = self.compose(depth + 1)
                node.value.append((key, value))
            node.end_mark = ld.get_event().end_mark
            return node
        raise self._refuse("unexpected YAML content", event.start_mark)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_ALLOWED_SCALAR_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}


class _Builder:
    """Turns a composed node graph into plain Python data plus a location map (bounded expansion)."""

    def __init__(self, loader: yaml.SafeLoader, filename: str) -> None:
        self.loader = loader
        self.filename = filename
        self.locations: Locations = {}
        self.expanded = 0
        self.stack: set[int] = set()  # ids of the nodes being built (a recursive alias would loop)

    def error(self, message: str, node: Node) -> ProtocolError:
        m = node.start_mark
        return ProtocolError(message, self.filename, m.line + 1, m.column + 1)

    def check_size(self, root: Node) -> None:
        """Refuse at once a document whose alias expansion would exceed MAX_NODES values (sizes are
        computed once per node of the graph, so a "billion laughs" file costs what it is long)."""
        sizes: dict[int, int] = {}
        open_: set[int] = set()

        def size(node: Node) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in open_:
                raise self.error("recursive YAML alias (a value that contains itself)", node)
            open_.add(key)
            if isinstance(node, SequenceNode):
                total = 1 + sum(size(c) for c in node.value)
            elif isinstance(node, MappingNode):
                total = 1 + sum(size(k) + size(v) for k, v in node.value)
            else:
                total = 1
            open_.discard(key)
            sizes[key] = min(total, MAX_NODES + 1)
            return sizes[key]

        if size(root) > MAX_NODES:
            raise self.error(f"document too large once aliases are expanded (more than {MAX_NODES} values)", root)

    def build(self, node: Node, path: Path) -> Any:
        self.expanded += 1
        if self.expanded > MAX_NODES:
            raise self.error(f"document too large once aliases are expanded (more than {MAX_NODES} values)", node)
        if len(path) > MAX_DEPTH:
            raise self.error(f"nesting too deep (more than {MAX_DEPTH} levels)", node)
        if id(node) in self.stack:
            raise self.error("recursive YAML alias (a value that contains itself)", node)
        self.locations[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        self.stack.add(id(node))
        try:
            if isinstance(node, ScalarNode):
                return self.scalar(node)
            if isinstance(node, SequenceNode):
                if node.tag != "tag:yaml.org,2002:seq":
                    raise self.error(f"unsupported YAML tag {node.tag!r} (protocol files hold plain values only)", node)
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != "tag:yaml.org,2002:map":
                    raise self.error(f"unsupported YAML tag {node.tag!r} (protocol files hold plain values only)", node)
                return self.mapping(node, path)
            raise self.error("unsupported YAML node", node)
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag not in _ALLOWED_SCALAR_TAGS:
            raise self.error(f"unsupported YAML tag {node.tag!r} (protocol files hold plain values only)", node)
        if node.tag == _STR_TAG:
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self.error(f"cannot read the value {node.value!r}: {exc}", node) from None

    def _pairs(self, node: MappingNode) -> list[tuple[Node, Node]]:
        """Key/value node pairs with YAML merge keys (<<) expanded; explicit keys win over merged ones."""
        own: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for src in sources:
                    if not isinstance(src, MappingNode):
                        raise self.error("a YAML merge (<<) needs a mapping", src)
                    merged.extend(self._pairs(src))
            else:
                own.append((key, value))
        if not merged:
            return own
        own_keys = {k.value for k, _ in own if isinstance(k, ScalarNode)}
        return own + [(k, v) for k, v in merged if not (isinstance(k, ScalarNode) and k.value in own_keys)]

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in self._pairs(node):
            if not isinstance(key_node, ScalarNode):
                raise self.error("a key must be plain text", key_node)
            key = self.scalar(key_node)
            if not isinstance(key, str):
                raise self.error(f"the key {key_node.value!r} must be text (quote it)", key_node)
            if key in out:
                raise self.error(f"duplicate key {key!r}", key_node)
            out[key] = self.build(value_node, (*path, key))
            # point a key's errors at the key itself, its value's errors at the value
            self.locations[(*path, key, "__key__")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out


def load_yaml(text: str, filename: str = "<string>") -> tuple[Any, Locations]:
    """Parse one YAML document safely; return (data, locations). Raises ProtocolError on any problem."""
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise ProtocolError(f"file too large (more than {MAX_BYTES // 1000} kB); protocol files are small",
                            filename, 1, 1)
    composer = BoundedComposer(text, filename)
    try:
        try:
            node = composer.single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "malformed YAML"
            if exc.context and exc.context_mark is not None and exc.problem_mark is not None \
                    and exc.context_mark.line != exc.problem_mark.line:
                problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
            line = mark.line + 1 if mark is not None else 1
            col = mark.column + 1 if mark is not None else 1
            problem += _hint(text, exc)
            raise ProtocolError(f"malformed YAML: {problem}", filename, line, col) from None
        except yaml.YAMLError as exc:
            raise ProtocolError(f"malformed YAML: {exc}".splitlines()[0], filename, 1, 1) from None
        except RecursionError:
            raise ProtocolError(f"nesting too deep (more than {MAX_DEPTH} levels)", filename, 1, 1) from None
        if node is None:
            raise ProtocolError("empty file: a protocol starts with 'cyclerctl: 1'", filename, 1, 1)
        builder = _Builder(composer.loader, filename)
        try:
            if composer.aliases:  # without aliases the composer's node count is the size
                builder.check_size(node)
            data = builder.build(node, ())
        except RecursionError:
            raise ProtocolError(f"nesting too deep (more than {MAX_DEPTH} levels)", filename, 1, 1) from None
        return data, builder.locations
    finally:
        composer.loader.dispose()


_LIST_ITEM = re.compile(r"^\s*-\s+[^{\[\s'\"]")


def _hint(text: str, exc: yaml.MarkedYAMLError) -> str:
    """A likely fix for the commonest slip: keys beside a step string."""
    mark = exc.problem_mark
    if mark is None or "mapping values are not allowed" not in (exc.problem or ""):
        return ""
    lines = text.splitlines()
    if 0 < mark.line < len(lines) and _LIST_ITEM.match(lines[mark.line - 1]) and ":" not in lines[mark.line - 1]:
        return " (a step string stands alone: to give it a label, write '- step: <the string>' and put 'label:' beside it)"
    return ""


def file_path(locations: Locations, loc: tuple[Any, ...]) -> Path:
    """The longest path in the file along `loc`, skipping entries that are not in the file (pydantic's
    union tags, which may even equal a key name, as in ("steps", 0, "for_each", "steps"))."""
    paths: dict[Path, int] = {(): -1}  # path -> index in loc of its last part
    for i, part in enumerate(loc):
        paths.update({(*p, part): i for p in list(paths) if (*p, part) in locations})
    return max(paths, key=lambda p: (len(p), paths[p]))


def locate(locations: Locations, loc: tuple[Any, ...], key: bool = False) -> tuple[int, int]:
    """The (line, column) of the deepest known path along `loc`. With key=True, prefer the position of
    the last key itself (for "unknown key" messages)."""
    path = file_path(locations, loc)
    if key and (*path, "__key__") in locations:
        return locations[(*path, "__key__")]
    return locations.get(path, locations.get((), (1, 1)))
