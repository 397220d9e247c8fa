"""Pure rendering: models in, ``{path: text}`` out. No file, network or process I/O happens here.

The same inputs always give the same bytes: dicts are built in a fixed order, there are no
timestamps, and sealed values are reused from the previous render (passed in) unless their inputs
changed. Randomness (add-on passwords) and sealing come in as callables so tests can control them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import jinja2
import yaml

from .errors import UserError, ValidationError, ValidationErrors
from .layout import (
    ANNOTATION_PREFIX,
    APPS_DIR,
    ARGOCD_HOOK,
    ARGOCD_HOOK_DELETE_POLICY,
    ARGOCD_SYNC_WAVE,
    HEADER,
    RELEASE_COMPONENT,
    WEB_COMPONENT,
    AppLayout,
)
from .manifests import generated, generated_documents, read_yaml
from .models import AppRegistration, Platform, Release
from .plugins import Plugin, builtin_dir, platform_default
from .processes import CRON_JOB_NAME_MAX, registration_errors

Files = dict[str, str]
SEALED_SECRET_SUFFIX = ".sealedsecret.yaml"


class Sealer(Protocol):
    def __call__(self, plaintext: str, namespace: str, name: str) -> str: ...


@dataclass(frozen=True)
class AppInputs:
    """Everything one app's files are a function of."""

    platform: Platform
    app: AppRegistration
    release: Release
    addons: Sequence[Plugin] = ()
    # encryptedData of the SealedSecrets already in this app's overlay, by SealedSecret name.
    previous_sealed: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["urlquote"] = lambda v: quote(str(v), safe="")
    return env


_JINJA = _jinja()


@functools.lru_cache(maxsize=256)
def _template(text: str) -> jinja2.Template:
    """Compile each distinct template text once per process."""
    return _JINJA.from_string(text)


def render_app(inputs: AppInputs, sealer: Sealer | None, new_secret: Callable[[int], str]) -> Files:
    """All files of one app (base, components, overlay, release record), keyed by GitOps path."""
    layout = AppLayout(inputs.app.name, inputs.platform.environment)
    _check_processes(inputs, layout)
    files: Files = {}
    files.update(_base(inputs, layout))
    overlay_resources: list[str] = []
    components: list[str] = []
    checksum_parts: dict[str, Any] = {}

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": layout.config_map, "labels": layout.labels()},
        "data": dict(inputs.app.env),
    }
    files[layout.config_map_file] = generated(config_map)
    overlay_resources.append("configmap.yaml")
    checksum_parts["env"] = dict(inputs.app.env)

    if inputs.app.secrets:
        name = layout.secret_file.rsplit("/", 1)[1]
        files[layout.secret_file] = generated(
            _sealed_secret(layout, layout.secret, dict(inputs.app.secrets), "web"),
            "Values sealed with `cupaas seal` for this namespace and name (strict scope).",
        )
        overlay_resources.append(name)
        checksum_parts[layout.secret] = dict(inputs.app.secrets)

    for addon in inputs.addons:
        files.update(_component(addon, inputs, layout))
        components.append(f"../../components/{addon.name}")
        creds = addon.spec.get("credentials")
        if creds:
            data = _addon_credentials(addon, inputs, layout, sealer, new_secret)
            name = f"{addon.name}{SEALED_SECRET_SUFFIX}"
            files[f"{layout.overlay}/{name}"] = generated(
                _sealed_secret(layout, creds["secret"], data, addon.name),
                f"Credentials of the {addon.name} add-on: generated once, sealed, kept on every later render.",
            )
            overlay_resources.append(name)
            checksum_parts[creds["secret"]] = data

    files[f"{layout.overlay}/ingress.yaml"] = generated(_ingress(inputs, layout))
    overlay_resources.append("ingress.yaml")

    checksum = hashlib.sha256(json.dumps(checksum_parts, sort_keys=True).encode()).hexdigest()
    names = [layout.deployment, *(layout.process_deployment(t) for t in inputs.release.worker_types)]
    files[f"{layout.overlay}/deployment-patch.yaml"] = generated_documents(
        [_config_patch(name, checksum) for name in names],
        "Restarts the pods when env values or secrets change (like a Heroku config change).",
    )
    files[layout.overlay_kustomization] = generated(
        _overlay_kustomization(inputs, layout, overlay_resources, components)
    )
    files[layout.release] = generated(_release_record(inputs.release),
                                      "What is deployed; Argo CD never reads this file.")
    return dict(sorted(files.items()))


PRE_STOP_SECONDS = 5
# The release phase: one attempt (as on Heroku: a failed migration is not retried blindly), bounded in time.
RELEASE_BACKOFF_LIMIT = 0
RELEASE_DEADLINE_SECONDS = 900
# Argo CD applies a sync wave, waits until it is healthy, then applies the next. The release Job is a
# Sync hook in the wave between what it needs (ServiceAccount, ConfigMap, SealedSecrets, add-ons: wave 0)
# and what it guards (the app's workloads and Ingress): a failing release fails the sync before them.
# Not a PreSync hook: PreSync runs before anything of the sync is applied, so on a first deploy the
# ServiceAccount and ConfigMap it uses do not exist yet, and later it would run with the previous env.
RELEASE_WAVE = "1"
AFTER_RELEASE_WAVE = "2"
CRON_HISTORY_LIMIT = 3
CRON_STARTING_DEADLINE_SECONDS = 300
CRON_TIME_ZONE = "Etc/UTC"


def _after_release(inputs: AppInputs) -> dict[str, str]:
    """Annotations of an object that must wait for the release phase (none without one)."""
    return {ARGOCD_SYNC_WAVE: AFTER_RELEASE_WAVE} if inputs.release.release_command else {}


def _shell(command: str) -> list[str]:
    return ["/bin/sh", "-c", f"exec {command}"]


def _container(name: str, command: str | None, inputs: AppInputs, layout: AppLayout) -> dict[str, Any]:
    """A container of the app's image with its env; the web container adds its port, probes and preStop."""
    container: dict[str, Any] = {"name": name, "image": layout.app}
    if command:
        # The command is in the manifest so that a reviewer sees what will run.
        container["command"] = _shell(command)
    if name == WEB_COMPONENT:
        port = inputs.release.config.port
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        container["env"] = [{"name": "PORT", "value": str(port)}]
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": layout.config_map}}]
    if inputs.app.secrets:
        env_from.append({"secretRef": {"name": layout.secret}})
    container["envFrom"] = env_from
    if name == WEB_COMPONENT:
        container.update(_probes(inputs))
    container["resources"] = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    container["securityContext"] = {"allowPrivilegeEscalation": False}
    if name == WEB_COMPONENT:
        # A terminating pod leaves the Service's endpoints at the moment it gets SIGTERM, but the ingress
        # controller learns that a moment later and keeps sending it requests: serve on for a few seconds
        # (the kubelet's own sleep, so the image needs no `sleep` binary; Kubernetes 1.30+).
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}}
    return container


def _probes(inputs: AppInputs) -> dict[str, Any]:
    healthcheck = inputs.release.config.healthcheck
    probe: dict[str, Any] = ({"httpGet": {"path": healthcheck, "port": "http"}} if healthcheck
                             else {"tcpSocket": {"port": "http"}})
    return {
        # Asked every second while the pod starts (120 s in all): a new release serves about as soon as it
        # can, instead of up to a period later; once started, the readiness and liveness probes take over.
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {**probe, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def _pod_spec(inputs: AppInputs, layout: AppLayout, container: dict[str, Any], job: bool = False) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"restartPolicy": "Never"} if job else {}
    pod_spec["serviceAccountName"] = layout.service_account
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["containers"] = [container]
    if inputs.release.config.dockerfile is None:
        # Images built from a runtime plugin run as a non-root user; an app's own Dockerfile may not.
        pod_spec["securityContext"] = {"runAsNonRoot": True}
    return pod_spec


def _metadata(name: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _web_deployment(inputs: AppInputs, layout: AppLayout) -> dict[str, Any]:
    container = _container(WEB_COMPONENT, inputs.release.start_command, inputs, layout)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(layout.deployment, layout.labels(), _after_release(inputs)),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": layout.selector()},
            # Zero downtime: a new pod must be ready before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": layout.labels()},
                         "spec": _pod_spec(inputs, layout, container)},
        },
    }


def _process_deployment(inputs: AppInputs, layout: AppLayout, process_type: str) -> dict[str, Any]:
    """A Procfile process type other than web: a Deployment of its own, no Service, no probes."""
    container = _container(process_type, inputs.release.processes[process_type], inputs, layout)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(layout.process_deployment(process_type), layout.labels(process_type),
                              _after_release(inputs)),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": layout.selector(process_type)},
            "template": {"metadata": {"labels": layout.labels(process_type)},
                         "spec": _pod_spec(inputs, layout, container)},
        },
    }


def _release_job(inputs: AppInputs, layout: AppLayout, command: str) -> dict[str, Any]:
    """The release phase: an Argo CD Sync hook Job that must succeed before the workloads roll out."""
    container = _container(RELEASE_COMPONENT, command, inputs, layout)
    annotations = {
        ARGOCD_HOOK: "Sync",
        # Recreated on every sync; kept after a failure, so its logs say why the deploy stopped.
        ARGOCD_HOOK_DELETE_POLICY: "BeforeHookCreation,HookSucceeded",
        ARGOCD_SYNC_WAVE: RELEASE_WAVE,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(layout.release_job, layout.labels(RELEASE_COMPONENT), annotations),
        "spec": {
            "backoffLimit": RELEASE_BACKOFF_LIMIT,
            "activeDeadlineSeconds": RELEASE_DEADLINE_SECONDS,
            "template": {"metadata": {"labels": layout.labels(RELEASE_COMPONENT)},
                         "spec": _pod_spec(inputs, layout, container, job=True)},
        },
    }


def _cron_job(inputs: AppInputs, layout: AppLayout, index: int) -> dict[str, Any]:
    entry = inputs.release.config.cron[index]
    container = _container(entry.name, entry.command, inputs, layout)
    labels = layout.labels(entry.name)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(layout.cron_job(entry.name), labels, _after_release(inputs)),
        "spec": {
            "schedule": entry.schedule,
            "timeZone": CRON_TIME_ZONE,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": CRON_STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": CRON_HISTORY_LIMIT,
            "failedJobsHistoryLimit": CRON_HISTORY_LIMIT,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 0,
                    "template": {"metadata": {"labels": labels},
                                 "spec": _pod_spec(inputs, layout, container, job=True)},
                },
            },
        },
    }


def _check_processes(inputs: AppInputs, layout: AppLayout) -> None:
    """What no single file's validation sees: registration vs Procfile, and names shared across files."""
    release, app = inputs.release, inputs.app
    registration = f"{APPS_DIR}/{app.name}.yaml"
    dotcupaas = f"{app.name}: .cupaas"
    errors = registration_errors(registration, app.name, app.processes, release.worker_types)
    # Each workload's pods carry its name as their component label, which the Deployments select on.
    owner = {WEB_COMPONENT: "the web process", RELEASE_COMPONENT: "the release phase"}
    owner.update({t: f"the Procfile's {t}: process" for t in release.worker_types})
    for addon in inputs.addons:
        if addon.name in owner:
            errors.append(ValidationError(dotcupaas, "services", f"{addon.name!r} is also {owner[addon.name]}; "
                                          "rename the process type"))
        owner.setdefault(addon.name, f"the {addon.name} add-on")
    for i, entry in enumerate(release.config.cron):
        if entry.name in owner:
            errors.append(ValidationError(dotcupaas, f"cron.{i}.name",
                                          f"{entry.name!r} is also {owner[entry.name]}; give the cron entry "
                                          "another name"))
        name = layout.cron_job(entry.name)
        if len(name) > CRON_JOB_NAME_MAX:
            errors.append(ValidationError(dotcupaas, f"cron.{i}.name",
                                          f"the CronJob would be named {name!r} ({len(name)} characters); "
                                          f"Kubernetes allows {CRON_JOB_NAME_MAX}: use a shorter name"))
    if errors:
        raise ValidationErrors(errors)


def _base(inputs: AppInputs, layout: AppLayout) -> Files:
    release = inputs.release
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": layout.service, "labels": layout.labels()},
        "spec": {
            "selector": layout.selector(),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": layout.service_account, "labels": layout.labels()},
        "automountServiceAccountToken": False,
    }
    start = release.start_command_source
    files = {
        f"{layout.base}/deployment.yaml": generated(
            _web_deployment(inputs, layout), f"Start command ({start}): {release.start_command or 'the image CMD'}"),
        f"{layout.base}/service.yaml": generated(service),
        f"{layout.base}/serviceaccount.yaml": generated(service_account),
    }
    resources = ["serviceaccount.yaml", "deployment.yaml", "service.yaml"]
    for process_type in release.worker_types:
        path = layout.process_file(process_type)
        files[path] = generated(_process_deployment(inputs, layout, process_type),
                                f"Procfile {process_type}: {release.processes[process_type]}")
        resources.append(path.removeprefix(f"{layout.base}/"))
    release_command = release.release_command
    if release_command:
        command, origin = release_command
        files[layout.release_job_file] = generated(
            _release_job(inputs, layout, command),
            f"Release phase ({origin}): {command}\nRuns before every rollout; when it fails, the rollout stops "
            "and the running pods keep serving.")
        resources.append(layout.release_job_file.removeprefix(f"{layout.base}/"))
    for i, entry in enumerate(release.config.cron):
        path = layout.cron_job_file(entry.name)
        files[path] = generated(_cron_job(inputs, layout, i),
                                f".cupaas cron {entry.name} ({entry.schedule}, UTC): {entry.command}")
        resources.append(path.removeprefix(f"{layout.base}/"))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    files[f"{layout.base}/kustomization.yaml"] = generated(kustomization)
    return files


def addon_settings(addon: Plugin, platform: Platform) -> dict[str, Any]:
    """The add-on's defaults, with the platform's ``addons.<name>`` settings (cupaas.yaml) over them."""
    settings = {k: platform_default(v, platform.registry) for k, v in addon.spec.get("defaults", {}).items()}
    settings.update(platform.addons.get(addon.name, {}))
    return settings


def _component(addon: Plugin, inputs: AppInputs, layout: AppLayout) -> Files:
    root = layout.component(addon.name)
    creds = addon.spec.get("credentials") or {}
    variables = {
        "app": layout.app,
        "namespace": layout.namespace,
        "labels": layout.labels(addon.name),
        "selector": layout.selector(addon.name),
        "secret": creds.get("secret", ""),
        "defaults": addon_settings(addon, inputs.platform),
    }
    files: Files = {}
    resources = []
    for template in addon.spec["resources"]:
        target = template.removesuffix(".j2")
        obj = _render_object(addon, template, variables)
        files[f"{root}/{target}"] = generated(obj)
        resources.append(target)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": resources,
    }
    env = addon.spec.get("env") or {}
    if env:
        variables_env = [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": creds["secret"], "key": ref["secret_key"]}}}
            for var, ref in env.items()
        ]
        files[f"{root}/app-env-patch.yaml"] = generated_documents(
            [_env_patch(kind, name, container, variables_env) for kind, name, container in _workloads(inputs, layout)],
            f"Connection settings the {addon.name} add-on gives the app.")
        kustomization["patches"] = [{"path": "app-env-patch.yaml"}]
    files[f"{root}/kustomization.yaml"] = generated(kustomization)
    return files


def _workloads(inputs: AppInputs, layout: AppLayout) -> list[tuple[str, str, str]]:
    """(kind, name, container) of every object running the app's image: each gets the app's env."""
    release = inputs.release
    found = [("Deployment", layout.deployment, WEB_COMPONENT)]
    found += [("Deployment", layout.process_deployment(t), t) for t in release.worker_types]
    if release.release_command:
        found.append(("Job", layout.release_job, RELEASE_COMPONENT))
    found += [("CronJob", layout.cron_job(e.name), e.name) for e in release.config.cron]
    return found


def _env_patch(kind: str, name: str, container: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = {"spec": {"containers": [{"name": container, "env": env}]}}
    spec = {"jobTemplate": {"spec": {"template": pod}}} if kind == "CronJob" else {"template": pod}
    return {
        "apiVersion": "batch/v1" if kind in ("Job", "CronJob") else "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def _render_object(addon: Plugin, template: str, variables: Mapping[str, Any]) -> Any:
    where = f"{addon.path}/{template}"
    try:
        text = _template(addon.template(template)).render(**variables)
        obj = read_yaml(text)
    except (jinja2.TemplateError, yaml.YAMLError) as e:
        raise UserError(f"{where}: the add-on template does not render: {e}") from e
    if not isinstance(obj, dict) or "kind" not in obj:
        raise UserError(f"{where}: must render to one Kubernetes object")
    return obj


def _addon_credentials(addon: Plugin, inputs: AppInputs, layout: AppLayout, sealer: Sealer | None,
                       new_secret: Callable[[int], str]) -> dict[str, str]:
    creds = addon.spec["credentials"]
    keys = sorted([*creds["generate"], *creds.get("derive", {})])
    previous = inputs.previous_sealed.get(creds["secret"])
    if previous is not None and sorted(previous) == keys:
        return dict(sorted(previous.items()))
    if sealer is None:
        raise ValidationError("cupaas.yaml", "sealing.cert",
                              f"a sealing certificate is needed to seal the {addon.name} credentials of "
                              f"{layout.app!r}; fetch it with `kubeseal --fetch-cert > sealing-cert.pem`")
    plain: dict[str, str] = {}
    for key, how in creds["generate"].items():
        plain[key] = how["value"] if "value" in how else new_secret(how["random"])
    context = {**plain, "app": layout.app, "namespace": layout.namespace}
    for key, template in creds.get("derive", {}).items():
        plain[key] = _template(template).render(**context)
    return {key: sealer(plain[key], layout.namespace, creds["secret"]) for key in keys}


def _sealed_secret(layout: AppLayout, name: str, data: Mapping[str, str], component: str) -> dict[str, Any]:
    labels = layout.labels(component)
    return {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": name, "namespace": layout.namespace, "labels": labels},
        "spec": {
            "encryptedData": dict(sorted(data.items())),
            "template": {
                "metadata": {"name": name, "namespace": layout.namespace, "labels": labels},
                "type": "Opaque",
            },
        },
    }


def _ingress(inputs: AppInputs, layout: AppLayout) -> dict[str, Any]:
    settings = inputs.platform.ingress
    hosts = [layout.host(inputs.platform.domain), *inputs.app.domains]
    metadata: dict[str, Any] = {"name": layout.ingress, "labels": layout.labels()}
    spec: dict[str, Any] = {"ingressClassName": settings.class_name}
    annotations = _after_release(inputs)
    if settings.cluster_issuer:
        annotations["cert-manager.io/cluster-issuer"] = settings.cluster_issuer
    if annotations:
        metadata["annotations"] = annotations
        spec["tls"] = [{"hosts": hosts, "secretName": layout.tls_secret}]
    backend = {"service": {"name": layout.service, "port": {"name": "http"}}}
    spec["rules"] = [
        {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
        for host in hosts
    ]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def _config_patch(deployment: str, checksum: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"template": {"metadata": {"annotations": {f"{ANNOTATION_PREFIX}config-checksum": checksum}}}},
    }


def _overlay_kustomization(inputs: AppInputs, layout: AppLayout, resources: list[str],
                           components: list[str]) -> dict[str, Any]:
    image = inputs.release.image
    pin: dict[str, Any] = {"name": layout.app, "newName": image.repository}
    if image.tag:
        pin["newTag"] = image.tag
    pin["digest"] = image.digest
    out: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": layout.namespace,
        "resources": ["../../base", *resources],
    }
    if components:
        out["components"] = components
    out["images"] = [pin]
    out["replicas"] = [{"name": layout.deployment, "count": inputs.app.replicas}, *(
        {"name": layout.process_deployment(t), "count": inputs.app.process_replicas(t)}
        for t in inputs.release.worker_types)]
    out["patches"] = [{"path": "deployment-patch.yaml"}]
    return out


def _release_record(release: Release) -> dict[str, Any]:
    return {
        "app": release.app,
        "commit": release.commit,
        "image": str(release.image),
        "cupaas": release.config.as_dict(),
        "start_command": release.start_command,
        "start_command_source": release.start_command_source,
        **({"runtime_version": release.runtime_version, "runtime_version_source": release.runtime_version_source}
           if release.runtime_version else {}),
        **({"processes": dict(release.processes)} if release.processes else {}),
        **({"rollback": release.rollback.as_dict()} if release.rollback else {}),
    }


def render_skeleton(platform: Platform) -> tuple[Files, Files]:
    """The repo-level files from gitops-repo-template/.

    Returns (generated, seeded): generated files (from ``*.j2``) are rewritten on every render;
    seeded files (README, .gitkeep) are only laid down when missing, so people can edit them.
    """
    root = builtin_dir("gitops-repo-template")
    variables = {"gitops_repo": platform.gitops.repo, "gitops_branch": platform.gitops.branch}
    rendered: Files = {}
    seeded: Files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        if rel.endswith(".j2"):
            body = _template(text).render(**variables)
            rendered[rel.removesuffix(".j2")] = HEADER + body
        else:
            seeded[rel] = text
    return rendered, seeded

