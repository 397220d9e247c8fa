"""The single validator every user-supplied name passes before it becomes a path, tag, ref or k8s name."""

from __future__ import annotations

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
