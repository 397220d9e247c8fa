"""What a release ran with (env, sealed secrets, replicas), read back from its GitOps commit, and the
control-repo change that makes an app's registration say the same (`cupaas rollback` restores config).

Only ciphertexts move: a SealedSecret's `encryptedData` is bound to the app's namespace and name, which a
rollback of the same app keeps, so vN's ciphertexts are valid `secrets:` as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..git_cache import CacheClone
from ..layout import AppLayout
from ..models import AppRegistration, ControlRepo
from .control_change import ControlChange
from .history import record_at
from .registrations import app_file, dump, read_registration


@dataclass(frozen=True)
class ReleaseConfig:
    env: Mapping[str, str]
    secrets: Mapping[str, str]  # ciphertexts
    replicas: int  # web
    processes: Mapping[str, int]  # every other process type the release ran


def _strings(value: Any, shown: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UserError(f"{shown}: not a map of strings; the rollback cannot read that release's config")
    return dict(value)


def config_at(clone: CacheClone, commit: str, layout: AppLayout) -> ReleaseConfig:
    """The env, secrets and replicas rendered at GitOps ``commit`` (the files cupaas wrote there)."""
    at = f"at {commit[:12]}"
    config_map = record_at(clone, commit, layout.config_map_file)
    if config_map is None:
        raise UserError(f"{layout.config_map_file} {at}: missing or unreadable, so that release's env is "
                        "unknown; roll back to another release")
    env = _strings(config_map.get("data"), f"{layout.config_map_file} {at}: data")
    sealed = record_at(clone, commit, layout.secret_file) or {}
    secrets = _strings((sealed.get("spec") or {}).get("encryptedData"), f"{layout.secret_file} {at}: encryptedData")
    kustomization = record_at(clone, commit, layout.overlay_kustomization) or {}
    counts = {str(r.get("name")): r.get("count") for r in kustomization.get("replicas") or []
              if isinstance(r, dict)}
    web = counts.pop(layout.deployment, None)
    prefix = layout.process_deployment("")
    processes = {name.removeprefix(prefix): count for name, count in sorted(counts.items())
                 if name.startswith(prefix) and isinstance(count, int)}
    if not isinstance(web, int) or len(processes) != len(counts):
        raise UserError(f"{layout.overlay_kustomization} {at}: no replica counts, so that release's scale is "
                        "unknown; roll back to another release")
    return ReleaseConfig(env=env, secrets=secrets, replicas=web, processes=processes)


def changed_keys(registration: AppRegistration, config: ReleaseConfig) -> list[str]:
    """What restoring ``config`` changes, by key and process type (never a value): empty when it agrees."""
    def differing(now: Mapping[str, object], then: Mapping[str, object]) -> list[str]:
        return sorted(k for k in {*now, *then} if now.get(k) != then.get(k))

    parts = []
    if env := differing(registration.env, config.env):
        parts.append("env " + ", ".join(env))
    if secrets := differing(registration.secrets, config.secrets):
        parts.append("secrets " + ", ".join(secrets))
    scaled = ["web"] if registration.replicas != config.replicas else []
    scaled += [t for t, c in config.processes.items() if registration.process_replicas(t) != c]
    if scaled:
        parts.append("replicas " + ", ".join(scaled))
    return parts


def restored(registration: AppRegistration, config: ReleaseConfig) -> AppRegistration:
    """The registration with ``config``; process types the release did not run keep their counts."""
    return replace(registration, env=dict(config.env), secrets=dict(config.secrets), replicas=config.replicas,
                   processes=dict(sorted({**registration.processes, **config.processes}.items())))


def restore_config(app: str, version: int, config: ReleaseConfig, changes: list[str], gitops_commit: str,
                   pause: bool = False) -> Callable[[ControlRepo, Path], ControlChange]:
    """One control-repo change: `env`, `secrets`, `replicas`, `processes` of ``apps/<app>.yaml`` as vN had
    them (and, with ``pause``, `auto_deploy: false`). The message names keys only."""
    def edit(control: ControlRepo, root: Path) -> ControlChange:
        raw, original = read_registration(root, control, app)
        for key, value in (("env", dict(config.env)), ("secrets", dict(config.secrets))):
            if value:
                raw[key] = value
            else:
                raw.pop(key, None)
        if config.replicas != 1 or "replicas" in raw:
            raw["replicas"] = config.replicas
        processes = dict(raw.get("processes") or {})
        for kind, count in config.processes.items():
            if count != 1 or kind in processes:
                processes[kind] = count
        if processes:
            raw["processes"] = dict(sorted(processes.items()))
        if pause:
            raw["auto_deploy"] = False
        title = (f"Restore config of {app} to v{version}: {'; '.join(changes)}"
                 + (" (and pause automatic deploys)" if pause else ""))
        body = (f"By `cupaas rollback {app} v{version}`: the env, secrets (ciphertexts) and replicas rendered "
                f"at GitOps {gitops_commit[:12]}." + (" Automatic deploys are paused until `cupaas "
                                                      "deploys:resume`." if pause else "") + "\n")
        return ControlChange({app_file(app): dump(raw, original)}, f"{title}\n\n{body}", f"{app}-rollback")
    return edit


@dataclass(frozen=True)
class ConfigRestore:
    """A rollback's config change for the control repo: what differs from now, and the edit that restores it."""

    app: str
    version: int
    config: ReleaseConfig
    changes: list[str]  # key names and process types, never values
    gitops_commit: str

    def edit(self, pause: bool = False) -> Callable[[ControlRepo, Path], ControlChange]:
        return restore_config(self.app, self.version, self.config, self.changes, self.gitops_commit, pause)
