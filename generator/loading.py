"""The validation boundary: raw YAML → JSON Schema check → frozen models.

Every error names the file and the field and says what to change; nothing past this module sees raw
YAML. Secret values never appear in a message.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import names, processes
from .errors import UserError, ValidationError, ValidationErrors
from .models import (
    AppConfig,
    AppRegistration,
    ControlRepo,
    ControlSettings,
    ForgeSettings,
    GitOpsSettings,
    ImageRef,
    IngressSettings,
    Mirrors,
    Platform,
    Release,
    Rollback,
    StatusForge,
)
from .sealing import SealingCert, check_sealed_value
from .source import SourceTree

PLATFORM_FILE = "cupaas.yaml"
APPS_DIR = "apps"
DOTCUPAAS = ".cupaas"
RESERVED_ENV = frozenset({"PORT"})
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def _is_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 8080.0 as an integer; YAML readers and Kubernetes do not (`containerPort: 8080.0`).
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@cache
def _validator(schema: str) -> Any:
    data = json.loads((_SCHEMA_DIR / f"{schema}.schema.json").read_text(encoding="utf-8"))
    return _Validator(data)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number", type(None): "empty (null)"}.get(type(value), type(value).__name__)


def _field(path: Iterable[Any]) -> str:
    # A key with a newline or another control character in it is shown quoted, on the message's one line.
    return ".".join(str(p) if str(p).isprintable() else repr(str(p)) for p in path)


def _describe(error: jsonschema.ValidationError, secret: bool) -> tuple[str, str]:
    """Turn one jsonschema error into (field, message) a person can act on."""
    path = list(error.absolute_path)
    hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
    v = error.validator
    if v == "required":
        missing = next((p for p in error.validator_value if p not in error.instance), "?")
        return _field([*path, missing]), "is required"
    if v == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        return _field([*path, extra[0] if extra else "?"]), (
            f"unknown field; allowed fields here: {', '.join(allowed)}" if allowed else "unknown field"
        )
    if "propertyNames" in error.schema_path:
        name_hint = hint or "invalid name"
        return _field([*path, str(error.instance)]), f"invalid name: {name_hint}"
    if v == "type" and isinstance(error.instance, float) and error.instance.is_integer() and not secret:
        msg = f"must be a whole number: write {int(error.instance)}, not {error.instance!r}"
    elif v == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        msg = f"must be {expected}, not {_type_name(error.instance)}"
    elif v == "enum":
        msg = "must be one of: " + ", ".join(str(x) for x in error.validator_value)
    elif v in ("pattern", "format") and not secret:
        msg = f"{error.instance!r} is not valid"
    elif secret:
        msg = "is not valid"
    else:
        msg = error.message
    if hint:
        msg = f"{msg} ({hint})"
    return _field(path), msg


def schema_errors(raw: Any, schema: str, file: str, secret_fields: tuple[str, ...] = ()) -> list[ValidationError]:
    out = []
    for error in sorted(_validator(schema).iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        top = str(error.absolute_path[0]) if error.absolute_path else ""
        field, msg = _describe(error, secret=top in secret_fields)
        out.append(ValidationError(file, field, msg))
    return out


MAX_FILE_BYTES = 1_000_000  # a control-repo file or .cupaas is a few KiB; this bounds a hostile one
MAX_DEPTH = 40  # mappings and lists nested deeper than any cupaas file needs
# YAML aliases share one node, so a few hundred bytes of anchors can stand for billions of values ("billion
# laughs"); every later walk (schema, sorting) would visit each one. No cupaas file holds a fraction of this.
MAX_VALUES = 100_000


def check_shape(node: Any, file: str, path: tuple[str, ...] = (), seen: list[int] | None = None) -> None:
    """Every mapping key is text, nothing nests past MAX_DEPTH and at most MAX_VALUES values are held
    (aliases counted each time they are used), so later code can sort and walk it."""
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_VALUES:
        raise ValidationError(file, "", f"holds more than {MAX_VALUES} values (YAML aliases expanding?); "
                              "write the values out instead of repeating anchors")
    if len(path) > MAX_DEPTH:
        raise ValidationError(file, _field(path[:3]) + ".…", f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValidationError(file, _field([*path, str(key)]),
                                      f"keys must be text, not {_type_name(key)}; quote it")
            check_shape(value, file, (*path, key), seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_shape(value, file, (*path, str(i)), seen)


def parse_yaml(text: str, file: str) -> dict[str, Any]:
    """Parse one YAML document that must be a mapping with text keys."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ValidationError(file, "", f"{where}{problem} (fix the YAML syntax)") from None
    except RecursionError:
        raise ValidationError(file, "", f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ValidationError(file, "", f"a value cannot be read: {e}") from None
    if data is None:
        raise ValidationError(file, "", "the file is empty; it must be a YAML mapping")
    if not isinstance(data, dict):
        raise ValidationError(file, "", f"must be a YAML mapping of fields, not {_type_name(data)}")
    check_shape(data, file)
    return data


def _read(path: Path, file: str) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES: never a FIFO, a device or a symlink loop."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValidationError(file, "", "file not found") from None
    except (OSError, ValueError) as e:  # ELOOP (a symlink loop), a NUL in the path, ...
        raise ValidationError(file, "", f"cannot be read: {e.__class__.__name__}") from None
    if not stat.S_ISREG(mode):
        raise ValidationError(file, "", "is not a regular file (a directory, FIFO or device): cupaas reads files only")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ValidationError(file, "", f"cannot be read: {e.__class__.__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValidationError(file, "", f"is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(file, "", "is not UTF-8 text") from None


def platform_from_raw(raw: dict[str, Any]) -> Platform:
    gitops = raw["gitops"]
    forge = gitops.get("forge")
    ingress = raw.get("ingress", {})
    mirrors = raw.get("mirrors", {})
    return Platform(
        domain=raw["domain"],
        registry=raw["registry"],
        environment=raw.get("environment", "production"),
        gitops=GitOpsSettings(
            repo=gitops["repo"],
            branch=gitops.get("branch", "main"),
            review=gitops.get("review", "pull-request"),
            forge=ForgeSettings(**forge) if forge else None,
        ),
        ingress=IngressSettings(class_name=ingress.get("class", "nginx"),
                                cluster_issuer=ingress.get("cluster_issuer")),
        sealing_cert=raw.get("sealing", {}).get("cert", "sealing-cert.pem"),
        runtimes={k: dict(v) for k, v in sorted(raw.get("runtimes", {}).items())},
        mirrors=Mirrors(pypi=mirrors.get("pypi"), debian=mirrors.get("debian"),
                        allow=tuple(mirrors.get("allow", ()))),
        addons={k: dict(v) for k, v in sorted(raw.get("addons", {}).items())},
        control=_control_settings(raw.get("control", {})),
    )


def _control_settings(raw: dict[str, Any]) -> ControlSettings:
    forge = raw.get("forge")
    return ControlSettings(review=raw.get("review", "direct"), forge=ForgeSettings(**forge) if forge else None)


def _env_value(value: str | int | float) -> str:
    return value if isinstance(value, str) else str(value)


def command_error(command: str, file: str, field: str, fix: str = names.COMMAND_FIX) -> ValidationError | None:
    """The error for a start command holding a character no manifest may carry (None: it is fine)."""
    problem = names.unsafe_character(command, allow=names.COMMAND_BLANKS)
    return ValidationError(file, field, f"{problem}; {fix}") if problem else None


def app_from_raw(name: str, raw: dict[str, Any], file: str) -> AppRegistration:
    errors: list[ValidationError] = []
    env = {k: _env_value(v) for k, v in sorted(raw.get("env", {}).items())}
    for key, value in env.items():
        problem = names.unsafe_character(value, allow=names.ENV_VALUE_BLANKS)
        if problem:
            errors.append(ValidationError(file, _field(["env", key]),
                                          f"{problem}, which a manifest cannot carry; remove it "
                                          "(tabs and line breaks are fine)"))
    secrets = dict(sorted(raw.get("secrets", {}).items()))
    for key, value in secrets.items():
        reason = check_sealed_value(value)
        if reason:
            errors.append(ValidationError(
                file, f"secrets.{key}",
                f"is not a sealed value ({reason}); never put plaintext here: seal it with "
                f"`cupaas seal CONTROL_DIR {name} {key}` and paste the output",
            ))
    for key in sorted(set(env) & set(secrets)):
        errors.append(ValidationError(file, f"secrets.{key}", "is also set under env; keep it in one place"))
    for key in sorted((set(env) | set(secrets)) & RESERVED_ENV):
        where = "env" if key in env else "secrets"
        errors.append(ValidationError(file, f"{where}.{key}", "is set by cupaas (from .cupaas `port`); remove it"))
    if errors:
        raise ValidationErrors(errors)
    return AppRegistration(
        name=name,
        repo=raw["repo"],
        branch=raw["branch"],
        env=env,
        secrets=secrets,
        replicas=raw.get("replicas", 1),
        domains=tuple(raw.get("domains", ())),
        processes=dict(sorted(raw.get("processes", {}).items())),
        forge=StatusForge(**raw["forge"]) if "forge" in raw else None,
        auto_deploy=raw.get("auto_deploy", True),
    )


def _collect(errors: list[ValidationError], exc: ValidationError | ValidationErrors) -> None:
    errors.extend(exc.errors if isinstance(exc, ValidationErrors) else [exc])


def load_platform_raw(root: Path, shown: str) -> dict[str, Any]:
    """`cupaas.yaml` read and checked against its schema, as the mapping it holds."""
    raw = parse_yaml(_read(root / PLATFORM_FILE, shown), shown)
    found = schema_errors(raw, "cupaas", shown)
    if found:
        raise ValidationErrors(found)
    return raw


def load_platform(root: Path, shown: str) -> Platform:
    """Read and validate `cupaas.yaml` alone (``shown`` is its path as the user should see it)."""
    return platform_from_raw(load_platform_raw(root, shown))


def load_control_repo(control_dir: str | Path, check_cert: bool = True) -> ControlRepo:
    """Load and validate every file of a control repo; report all problems at once."""
    root = Path(control_dir)
    shown = str(control_dir).rstrip("/") or "."
    errors: list[ValidationError] = []
    if not root.is_dir():
        raise ValidationError(shown, "", "is not a directory; pass the path of a control repo checkout")

    platform_file = f"{shown}/{PLATFORM_FILE}"
    platform: Platform | None = None
    try:
        platform = load_platform(root, platform_file)
    except (ValidationError, ValidationErrors) as e:
        _collect(errors, e)

    apps: dict[str, AppRegistration] = {}
    apps_dir = root / APPS_DIR
    files = sorted(apps_dir.iterdir()) if apps_dir.is_dir() else []
    for path in files:
        file = f"{shown}/{APPS_DIR}/{path.name if path.name.isprintable() else repr(path.name)}"
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix == ".yml":
            errors.append(ValidationError(file, "", f"rename it to {path.stem}.yaml (app files end in .yaml)"))
            continue
        if path.suffix != ".yaml":
            continue
        name = path.stem
        if not names.is_app_name(name):
            errors.append(ValidationError(file, "", f"{name!r} is not a valid app name: {names.APP_NAME_RULE}"))
            continue
        try:
            raw = parse_yaml(_read(path, file), file)
            found = schema_errors(raw, "app", file, secret_fields=("secrets",))
            if found:
                raise ValidationErrors(found)
            apps[name] = app_from_raw(name, raw, file)
        except (ValidationError, ValidationErrors) as e:
            _collect(errors, e)

    if platform is not None:
        errors.extend(_check_hosts(platform, apps, shown))
        if check_cert:
            errors.extend(_check_cert(root, platform, platform_file))
    if errors:
        raise ValidationErrors(errors)
    assert platform is not None
    return ControlRepo(path=shown, platform=platform, apps=apps)


def _check_hosts(platform: Platform, apps: Mapping[str, AppRegistration], shown: str) -> list[ValidationError]:
    """Two apps must never claim the same host: the second Ingress would silently steal traffic."""
    owner: dict[str, str] = {f"{n}.{platform.domain}": n for n in apps}
    errors = []
    for name, app in apps.items():
        for i, host in enumerate(app.domains):
            other = owner.setdefault(host, name)
            if other != name:
                errors.append(ValidationError(f"{shown}/{APPS_DIR}/{name}.yaml", f"domains.{i}",
                                              f"{host!r} is already the host of app {other!r}"))
    return errors


def load_sealing_cert(root: Path, platform: Platform, platform_file: str) -> SealingCert:
    """The certificate `sealing.cert` names, which must be a file inside the control repo ``root``.

    The path is resolved (symlinks included) before anything is read, so a path leading out of the repo is
    refused with one message whatever is there: no error tells whether a file outside exists.
    """
    relative = platform.sealing_cert
    try:
        base = root.resolve()
        path: Path | None = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL in the path
        path = None
    if path is None or not path.is_relative_to(base) or path == base:
        raise ValidationError(platform_file, "sealing.cert",
                              f"{relative!r} is not a file inside the control repo; keep the certificate in "
                              "the repo and name it by its path there, such as sealing-cert.pem")
    try:
        return SealingCert.load(path, shown=str(root / relative))
    except UserError as e:
        raise ValidationError(platform_file, "sealing.cert", str(e)) from None


def _check_cert(root: Path, platform: Platform, platform_file: str) -> list[ValidationError]:
    try:
        load_sealing_cert(root, platform, platform_file)
    except ValidationError as e:
        return [e]
    return []


def parse_app_config(text: str, file: str = DOTCUPAAS) -> AppConfig:
    raw = parse_yaml(text, file)
    found = schema_errors(raw, "dotcupaas", file)
    run_error = command_error(raw["run"], file, "run") if isinstance(raw.get("run"), str) else None
    if run_error:
        found.append(run_error)
    found.extend(processes.config_errors(raw, file))
    if found:
        raise ValidationErrors(found)
    return AppConfig(
        runtime=raw["runtime"],
        services=tuple(raw.get("services", ())),
        run=raw.get("run"),
        port=raw.get("port", 8080),
        healthcheck=raw.get("healthcheck"),
        dockerfile=raw.get("dockerfile"),
        release=raw.get("release"),
        cron=processes.cron_from_raw(raw.get("cron", [])),
        boot_check=raw.get("boot_check"),
    )


def load_app_config(source: SourceTree, shown: str = DOTCUPAAS) -> AppConfig:
    """Read `.cupaas` from an app source; a missing file gets an example of what to write."""
    text = source.read_text(DOTCUPAAS)
    if text is None:
        raise ValidationError(shown, "", "not found at the root of the app repo; add one, for example:\n"
                              "  runtime: python\n  services: [mongodb]")
    return parse_app_config(text, shown)


def release_from_record(raw: Any, file: str, app: str) -> Release:
    """Parse `apps/<app>/release.yaml` written by an earlier render."""
    if not isinstance(raw, dict):
        raise ValidationError(file, "", "is not a release record; re-deploy the app to rewrite it")
    try:
        image = ImageRef.parse(str(raw["image"]))
        config_raw = raw["cupaas"]
        found = schema_errors(config_raw, "dotcupaas", file)
        if found:
            raise ValidationErrors(found)
        config = parse_app_config(yaml.safe_dump(config_raw), file)
        commit = raw.get("commit")
        start_command = raw.get("start_command")
        start_command_source = raw.get("start_command_source", "recorded")
        errors = _record_command_errors(file, {"start_command": start_command,
                                               "start_command_source": start_command_source})
        if errors:
            raise ValidationErrors(errors)
        return Release(app=app, commit=str(commit) if commit else None, image=image, config=config,
                       start_command=start_command, start_command_source=str(start_command_source),
                       processes=processes.recorded_processes(raw.get("processes"), file),
                       rollback=_recorded_rollback(raw.get("rollback"), file),
                       runtime_version=_recorded_text(raw, "runtime_version", file),
                       runtime_version_source=_recorded_text(raw, "runtime_version_source", file))
    except KeyError as e:
        raise ValidationError(file, str(e.args[0]), "is missing; re-deploy the app to rewrite the record") from None
    except ValueError as e:
        raise ValidationError(file, "image", str(e)) from None


def _recorded_rollback(raw: Any, file: str) -> Rollback | None:
    """The `rollback:` block `cupaas rollback` writes: {version: N, superseded: <commit sha>}."""
    if raw is None:
        return None
    version = raw.get("version") if isinstance(raw, dict) else None
    superseded = raw.get("superseded") if isinstance(raw, dict) else None
    if (not isinstance(version, int) or isinstance(version, bool) or version < 1 or not isinstance(superseded, str)
            or not _COMMIT_SHA.fullmatch(superseded)):
        raise ValidationError(file, "rollback", "must be {version: <release number>, superseded: <commit sha>}; "
                              "run `cupaas rollback` again to rewrite it")
    return Rollback(version=version, superseded=superseded)


def _recorded_text(raw: Mapping[str, Any], field: str, file: str) -> str | None:
    """An optional one-line text field of a release record (the runtime version and why it was chosen)."""
    value = raw.get(field)
    if value is not None and (not isinstance(value, str) or not value.isprintable()):
        raise ValidationError(file, field, "must be text on one line; re-deploy the app to rewrite the record")
    return value


def _record_command_errors(file: str, fields: Mapping[str, Any]) -> list[ValidationError]:
    """A release record's start command fields go into a manifest comment: text on one line, as `run` is."""
    fix = "re-deploy the app to rewrite the record"
    errors = []
    for field, value in fields.items():
        error = (None if value is None
                 else ValidationError(file, field, f"must be text; {fix}") if not isinstance(value, str)
                 else command_error(value, file, field, fix))
        if error:
            errors.append(error)
    return errors
