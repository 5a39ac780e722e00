"""Load policy YAML keeping the line of every key and list item, for `file:line` error messages.

Stricter than ``yaml.safe_load``: duplicate keys, non-string keys, aliases (billion-laughs) and
merge keys are errors instead of being silently resolved.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_POLICY_FILE_BYTES = 2 * 1024 * 1024


class LDict(dict[str, Any]):
    """A mapping that remembers where it and each of its keys were written."""

    line: int = 0
    key_lines: dict[str, Any]


class LList(list[Any]):
    line: int = 0
    item_lines: list[Any]


class YAMLSourceError(ValueError):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()  # type: ignore[no-untyped-call]  # types-PyYAML leaves it unannotated
            raise YAMLSourceError(ev.start_mark.line + 1, "YAML aliases (*name) are not allowed in policy files")
        return super().compose_node(parent, index)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    out = LDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise YAMLSourceError(line, "YAML merge keys (<<) are not allowed in policy files")
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise YAMLSourceError(line, f"mapping keys must be strings, got {type(key).__name__}")
        if key in out:
            raise YAMLSourceError(line, f"duplicate key {key!r} (first at line {out.key_lines[key]})")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LList:
    out = LList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str) -> Any:
    """Parse one YAML document; raises YAMLSourceError with a 1-based line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_FILE_BYTES:
        raise YAMLSourceError(None, f"file larger than {MAX_POLICY_FILE_BYTES} bytes")
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # noqa: S506 - _Loader derives from SafeLoader
    except YAMLSourceError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed YAML"
        raise YAMLSourceError(mark.line + 1 if mark else None, f"malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise YAMLSourceError(None, f"malformed YAML: {type(exc).__name__}") from None
    except RecursionError:
        raise YAMLSourceError(None, "malformed YAML: nested too deeply") from None
    if len(docs) != 1:
        raise YAMLSourceError(None, f"expected exactly one YAML document, found {len(docs)}")
    return docs[0]


def line_of(root: Any, path: list[Any]) -> int | None:
    """Line of the deepest element of ``path`` (keys and indexes) that has a known line."""
    node, line = root, getattr(root, "line", None)
    for step in path:
        if isinstance(node, LDict) and isinstance(step, str) and step in node:
            line = node.key_lines.get(step, line)
            node = node[step]
        elif isinstance(node, LList) and isinstance(step, int) and 0 <= step < len(node):
            line = node.item_lines[step]
            node = node[step]
        else:
            break
    return line
