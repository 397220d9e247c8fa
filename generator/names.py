"""The single validator every user-supplied name passes before it becomes a path, tag, ref or k8s name.

Also the one rule for free text that ends up in a manifest (env values, the start command): which
characters it may hold.
"""

from __future__ import annotations

import functools
import re

APP_NAME_MAX = 40
# App names also name Services, which must be DNS-1035 labels (start with a letter).
_APP_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_app_name(name: str) -> bool:
    """An app name is a DNS-1123 label of at most 40 characters that starts with a letter."""
    return len(name) <= APP_NAME_MAX and bool(_APP_NAME.fullmatch(name))


def is_env_name(name: str) -> bool:
    return bool(_ENV_NAME.fullmatch(name))


APP_NAME_RULE = (
    "use lowercase letters, digits and '-', start with a letter, end with a letter or digit, at most 40 characters"
)


# Characters free text must never carry into a manifest, an image or a log line:
# - C0 controls, DEL, C1 controls, lone surrogates, U+FFFE and U+FFFF are not YAML text (YAML 1.2
#   c-printable): kustomize and Argo CD refuse the file ("control characters are not allowed"), even
#   where the Python dumper wrote them as escapes, and a terminal obeys ESC and CSI (U+009B);
# - NEL (U+0085), U+2028 and U+2029 are line breaks to YAML 1.1 (PyYAML) but not to YAML 1.2
#   (kustomize, Argo CD), so the two would read a different value.
# Tab, line feed and carriage return are YAML's own whitespace and line breaks: a field decides.
_BLANKS = "\t\n\r"
# Env values may span lines and hold tabs: YAML carries both (escaped or in a block), and so does Kubernetes.
ENV_VALUE_BLANKS = _BLANKS
# A start command is one line: it goes into the image's CMD, a manifest comment and the deploy log.
COMMAND_BLANKS = "\t"
COMMAND_FIX = "the start command is one line of plain text: remove it"
_NEVER = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff"


@functools.cache
def _refused(allow: str) -> re.Pattern[str]:
    return re.compile(f"[{_NEVER}{''.join(c for c in _BLANKS if c not in allow)}]")


def _kind(ch: str) -> str:
    if ch in "\u2028\u2029":
        return "line separator"
    if "\ud800" <= ch <= "\udfff":
        return "lone surrogate"
    if ch in "\ufffe\uffff":
        return "non-character"
    return "control character"


def unsafe_character(text: str, allow: str = _BLANKS) -> str | None:
    """What is wrong with ``text`` as manifest text, or None: the first character it must not hold.

    ``allow`` is which of tab, line feed and carriage return the field accepts. The character is
    shown escaped (``'\\x1b' (U+001B)``), never raw, so a message cannot drive the terminal it is read on.
    """
    found = _refused(allow).search(text)
    if found is None:
        return None
    ch = found[0]
    return f"contains the {_kind(ch)} {ch!r} (U+{ord(ch):04X})"
