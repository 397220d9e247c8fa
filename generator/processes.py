"""Process types: the Procfile's lines, `.cupaas` ``release``/``cron``, and the registration's ``processes``.

What an app runs besides its web process comes from three files: the Procfile (``worker: ...``,
``release: ...``), `.cupaas` (``release:``, ``cron:``) and `apps/<app>.yaml` (``processes:`` replicas).
Their JSON Schemas check shapes; this module checks what a schema cannot (a cron field's range, a
control character in a command, two cron entries of one name) and parses the Procfile. Each error
names the file and the field, as the rest of the validation boundary does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import names
from .errors import ValidationError, ValidationErrors
from .models import CronEntry

PROCFILE = "Procfile"
WEB = "web"
RELEASE = "release"
# A type names a Deployment `<app>-<type>` and its container: with an app name of at most 40
# characters, 20 keeps `<app>-<type>` a DNS label (63).
TYPE_MAX = 20
_TYPE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
TYPE_RULE = f"lowercase letters, digits and '-', starting with a letter, at most {TYPE_MAX} characters"
# Kubernetes names a CronJob's Jobs `<cronjob>-<minutes since the epoch>`, so a CronJob name has at most 52.
CRON_JOB_NAME_MAX = 52
REPLICAS_MAX = 50
COMMAND_FIX = "a command is one line of plain text: remove it"

# A Procfile line as foreman and Heroku read it: `<type>: <command>`; other lines are not entries.
_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*:\s*(.*?)\s*$")

# The five fields of a cron schedule: name, lowest, highest, names allowed (Kubernetes' parser).
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_ITEM = re.compile(r"(?:(\*|\?)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?")


def is_type_name(name: str) -> bool:
    return len(name) <= TYPE_MAX and bool(_TYPE.fullmatch(name))


def parse_procfile(text: str) -> dict[str, str]:
    """Every `<type>: <command>` line of a Procfile, sorted by type; a ValidationError for the first bad line.

    One error, not a list: the runtime's caller names the app's files in a ValidationError's path.
    """
    found: dict[str, str] = {}
    errors: list[ValidationError] = []
    # Lines end at a line feed only: str.splitlines() also breaks at U+2028, NEL, \x1c..., which would
    # cut a command short at a character that must be refused instead.
    for number, line in enumerate(text.split("\n"), start=1):
        match = _LINE.match(line.removesuffix("\r"))
        if match is None or line.lstrip().startswith("#"):
            continue
        kind, command = match[1], match[2]
        if not is_type_name(kind):
            errors.append(ValidationError(PROCFILE, kind if kind.isprintable() else repr(kind),
                                          f"line {number}: invalid process type name: {TYPE_RULE}"))
        elif kind in found:
            errors.append(ValidationError(PROCFILE, kind, f"line {number}: is declared twice; keep one line"))
        elif not command:
            errors.append(ValidationError(PROCFILE, kind, f"line {number}: has no command"))
        else:
            problem = names.unsafe_character(command, allow=names.COMMAND_BLANKS)
            if problem:
                errors.append(ValidationError(PROCFILE, kind, f"{problem}; {names.COMMAND_FIX}"))
            found[kind] = command
    if errors:
        raise errors[0]
    return dict(sorted(found.items()))


def schedule_problem(schedule: str) -> str | None:
    """What is wrong with a cron schedule (five fields, or a macro such as @daily), or None."""
    text = schedule.strip().lower()
    if text.startswith("@"):
        return None if text in MACROS else f"unknown macro {schedule!r}; use one of {', '.join(MACROS)}"
    fields = text.split()
    if len(fields) != len(_FIELDS):
        return (f"has {len(fields)} fields, a schedule has 5 (minute hour day-of-month month day-of-week), "
                "such as '*/15 * * * *'")
    for value, (label, low, high, words) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            match = _ITEM.fullmatch(item)
            if match is None:
                return f"the {label} field {value!r} is not valid (use *, a number, a-b, a list a,b or */n)"
            bounds = [b for b in (match[2], match[3]) if b is not None]
            for bound in bounds:
                number = words.index(bound) + low if bound in words else int(bound) if bound.isdigit() else None
                if number is None or not low <= number <= high:
                    return f"the {label} field {value!r} is not valid: values go from {low} to {high}"
            if match[4] is not None and int(match[4]) == 0:
                return f"the {label} field {value!r} has a step of 0"
    return None


def _command_error(file: str, field: str, command: Any) -> ValidationError | None:
    problem = names.unsafe_character(command, allow=names.COMMAND_BLANKS) if isinstance(command, str) else None
    return ValidationError(file, field, f"{problem}; {COMMAND_FIX}") if problem else None


def config_errors(raw: Mapping[str, Any], file: str) -> list[ValidationError]:
    """What `.cupaas` ``release`` and ``cron`` hold that their schema cannot refuse (shapes are checked)."""
    errors = [e for e in [_command_error(file, "release", raw.get("release"))] if e]
    cron = raw.get("cron")
    seen: set[str] = set()
    for i, entry in enumerate(cron if isinstance(cron, list) else []):
        if not isinstance(entry, dict):
            continue
        error = _command_error(file, f"cron.{i}.command", entry.get("command"))
        if error:
            errors.append(error)
        schedule = entry.get("schedule")
        problem = schedule_problem(schedule) if isinstance(schedule, str) else None
        if problem:
            errors.append(ValidationError(file, f"cron.{i}.schedule", problem))
        name = entry.get("name")
        if isinstance(name, str) and name in seen:
            errors.append(ValidationError(file, f"cron.{i}.name", f"{name!r} names another cron entry too"))
        seen.add(str(name))
    return errors


def cron_from_raw(raw: Sequence[Mapping[str, str]]) -> tuple[CronEntry, ...]:
    """The validated ``cron:`` list as models, in the order written."""
    return tuple(CronEntry(name=e["name"], schedule=e["schedule"], command=e["command"]) for e in raw)


def recorded_processes(raw: Any, file: str) -> dict[str, str]:
    """The ``processes`` of a release record (the Procfile's types), checked as a Procfile line is."""
    if raw is None:
        return {}
    fix = "re-deploy the app to rewrite the record"
    if not isinstance(raw, dict):
        raise ValidationError(file, "processes", f"must be a mapping of process type to command; {fix}")
    errors = []
    for kind, command in raw.items():
        field = f"processes.{kind}" if str(kind).isprintable() else f"processes.{str(kind)!r}"
        if not isinstance(kind, str) or not is_type_name(kind) or kind == WEB:
            errors.append(ValidationError(file, field, f"is not a process type ({TYPE_RULE}); {fix}"))
        elif not isinstance(command, str) or not command:
            errors.append(ValidationError(file, field, f"must be a command; {fix}"))
        else:
            error = _command_error(file, field, command)
            if error:
                errors.append(ValidationError(file, field, f"{error.message.split(';')[0]}; {fix}"))
    if errors:
        raise ValidationErrors(errors)
    return dict(sorted(raw.items()))


def registration_errors(file: str, app: str, processes: Mapping[str, int],
                        declared: Sequence[str]) -> list[ValidationError]:
    """`processes:` of `apps/<app>.yaml` against the process types the deployed Procfile declares."""
    errors = []
    for kind in sorted(processes):
        if kind == WEB:
            errors.append(ValidationError(file, f"processes.{kind}", "web is scaled by `replicas`; move it there"))
        elif kind == RELEASE:
            errors.append(ValidationError(file, f"processes.{kind}",
                                          "the release phase is a Job run once per deploy, not scaled; remove it"))
        elif kind not in declared:
            have = ", ".join(declared) or "none besides web"
            errors.append(ValidationError(
                file, f"processes.{kind}",
                f"the Procfile of {app!r} declares no {kind}: process (it declares: {have}); "
                f"add a `{kind}:` line to the Procfile or remove it here"))
    return errors
