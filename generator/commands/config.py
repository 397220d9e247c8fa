"""What an app runs with, changed without a build: `config`, `config:set`, `config:unset`, `ps:scale`.

Plain values go under `env:`; `--secret` values are sealed with the controller's certificate and only
their ciphertext is written, under `secrets:`. Process counts go to `replicas:` (web) and `processes:`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import names
from ..errors import UserError, ValidationError
from ..layout import AppLayout
from ..loading import PLATFORM_FILE, load_sealing_cert
from ..models import ControlRepo
from ..sealing import seal
from .control_change import ControlChange
from .registrations import app_file, dump, read_registration

MAX_SECRET_BYTES = 512 * 1024  # with its sealing overhead, a Secret's data must stay under 1 MiB
_MAX_SCALE = {"web": 100}


def parse_pairs(items: Sequence[str], what: str, allow_bare: bool = False) -> list[tuple[str, str | None]]:
    """`K=V` arguments (with ``allow_bare``, also `K`: its value comes from standard input)."""
    if not items:
        raise UserError(f"give at least one {what}")
    pairs: list[tuple[str, str | None]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and not allow_bare:
            raise UserError(f"{key!r}: expected {what}, such as LOG_LEVEL=debug")
        if not names.is_env_name(key):
            raise UserError(f"{key!r}: a config key is letters, digits and '_', not starting with a digit "
                            f"(expected {what})")
        if any(k == key for k, _ in pairs):
            raise UserError(f"{key}: given twice; give each key once")
        pairs.append((key, value if sep else None))
    return pairs


def read_stdin_value(key: str) -> str:
    """A value typed or piped on standard input (`cupaas seal`, `config:set --secret`), one final newline off."""
    if sys.stdin.isatty():
        print(f"Type the value of {key}, then Ctrl-D:", file=sys.stderr)
    try:
        value = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"the value of {key} on standard input is not UTF-8 text") from None
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise UserError(f"the value of {key} is larger than {MAX_SECRET_BYTES} bytes (a Secret holds 1 MiB)")
    return value[:-1] if value.endswith("\n") else value


def config_set(app: str, pairs: Sequence[tuple[str, str | None]], secret: bool,
               read_value: Callable[[str], str] = read_stdin_value) -> Callable[[ControlRepo, Path], ControlChange]:
    values: dict[str, str] = {}  # read once: the edit may run again after a lost push race

    def value_of(key: str, given: str | None) -> str:
        if key not in values:
            values[key] = given if given is not None else read_value(key)
        if values[key] == "":
            raise UserError(f"the value of {key} is empty; give {key}=VALUE (or unset it with config:unset)")
        return values[key]

    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, original = read_registration(root, control, app)
        shown = f"{control.path}/{app_file(app)}"
        env = dict(raw.get("env") or {})
        sealed = dict(raw.get("secrets") or {})
        if not secret:
            for key, given in pairs:
                if key in sealed:
                    raise ValidationError(shown, f"secrets.{key}",
                                          f"{key} is a secret: set it with --secret, so its value is sealed "
                                          "and never written in plaintext (nothing was changed)")
                if given is None:
                    raise UserError(f"{key!r}: expected KEY=VALUE, such as LOG_LEVEL=debug")
            for key, given in pairs:
                env[key] = value_of(key, given)
        else:
            platform = control.platform
            cert = load_sealing_cert(root, platform, f"{control.path}/{PLATFORM_FILE}")
            layout = AppLayout(app, platform.environment)
            for key, given in pairs:
                env.pop(key, None)
                sealed[key] = seal(cert, value_of(key, given), layout.namespace, layout.secret)
        raw = {k: v for k, v in raw.items() if k not in ("env", "secrets")} | (
            {"env": dict(sorted(env.items()))} if env else {}) | ({"secrets": dict(sorted(sealed.items()))}
                                                                 if sealed else {})
        keys = ", ".join(k for k, _ in pairs)
        kind = "secret" if secret else "config"
        return ControlChange({app_file(app): dump(raw, original)}, f"Set {kind} of {app}: {keys}", f"{app}-config")
    return edit


def config_unset(app: str, keys: Sequence[str]) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, original = read_registration(root, control, app)
        env = dict(raw.get("env") or {})
        sealed = dict(raw.get("secrets") or {})
        for key in keys:
            if key not in env and key not in sealed:
                known = ", ".join(sorted([*env, *sealed])) or "none"
                raise UserError(f"{control.path}/{app_file(app)}: {key} is not set (set keys: {known})")
            env.pop(key, None)
            sealed.pop(key, None)
        raw = {k: v for k, v in raw.items() if k not in ("env", "secrets")} | (
            {"env": env} if env else {}) | ({"secrets": sealed} if sealed else {})
        return ControlChange({app_file(app): dump(raw, original)}, f"Unset config of {app}: {', '.join(keys)}",
                             f"{app}-config")
    if not keys:
        raise UserError("give at least one KEY to unset")
    return edit


@dataclass(frozen=True)
class ConfigEntry:
    key: str
    value: str | None  # None: a secret (sealed)
    secret: bool


def config_of(control: ControlRepo, app: str) -> list[ConfigEntry]:
    registration = control.app(app)
    entries = [ConfigEntry(k, v, False) for k, v in registration.env.items()]
    entries += [ConfigEntry(k, None, True) for k in registration.secrets]
    return sorted(entries, key=lambda e: e.key)


def parse_scale(items: Sequence[str]) -> dict[str, int]:
    if not items:
        raise UserError("give at least one TYPE=N, such as web=2")
    counts: dict[str, int] = {}
    for item in items:
        kind, sep, count = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", kind) or not re.fullmatch(r"[0-9]{1,3}", count):
            raise UserError(f"{item!r}: expected TYPE=N, such as web=2 or worker=1 (N a whole number)")
        limit = _MAX_SCALE.get(kind, 50)
        if int(count) > limit:
            raise UserError(f"{item!r}: at most {limit} pods of {kind}")
        counts[kind] = int(count)
    return counts


def scale(app: str, counts: Mapping[str, int]) -> Callable[[ControlRepo, Path], ControlChange]:
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, original = read_registration(root, control, app)
        processes = dict(raw.get("processes") or {})
        for kind, count in counts.items():
            if kind == "web":
                raw["replicas"] = count
            else:
                processes[kind] = count
        if processes:
            raw["processes"] = dict(sorted(processes.items()))
        shown = ", ".join(f"{k}={v}" for k, v in counts.items())
        return ControlChange({app_file(app): dump(raw, original)}, f"Scale {app}: {shown}", f"{app}-scale")
    return edit
