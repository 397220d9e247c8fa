"""Deterministic YAML text for rendered files: one place decides quoting, order and the header."""

from __future__ import annotations

from typing import Any

import yaml

from .layout import HEADER

# libyaml (bundled in PyYAML's wheels) is ~10x faster than the pure-Python emitter; both give the
# same text for the plain block-style YAML written here (the golden tests hold either to it).
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    """Safe dumper that never emits aliases and writes multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line values (certificates, scripts) read best as literal blocks.
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    """YAML text in the order the data was built (callers build dicts in a fixed order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=1 << 16, indent=2)


def generated(data: Any, comment: str | None = None) -> str:
    """A generated file: the do-not-edit header, an optional comment, then the YAML."""
    note = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    return HEADER + note + to_yaml(data)


def generated_documents(documents: list[Any], comment: str | None = None) -> str:
    """A generated file of several YAML documents (one a ``---`` block), in the order given."""
    if len(documents) == 1:
        return generated(documents[0], comment)
    return generated(documents[0], comment) + "".join("---\n" + to_yaml(d) for d in documents[1:])


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a safe loader (C or Python), never the full one
