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

from .errors import UserError, ValidationError
from .layout import ANNOTATION_PREFIX, HEADER, AppLayout
from .manifests import generated, read_yaml
from .models import AppRegistration, Platform, Release
from .plugins import Plugin, builtin_dir, platform_default

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
    files[f"{layout.overlay}/configmap.yaml"] = generated(config_map)
    overlay_resources.append("configmap.yaml")
    checksum_parts["env"] = dict(inputs.app.env)

    if inputs.app.secrets:
        name = f"secrets{SEALED_SECRET_SUFFIX}"
        files[f"{layout.overlay}/{name}"] = generated(
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
    files[f"{layout.overlay}/deployment-patch.yaml"] = generated(
        _config_patch(layout, checksum),
        "Restarts the pods when env values or secrets change (like a Heroku config change).",
    )
    files[f"{layout.overlay}/kustomization.yaml"] = generated(
        _overlay_kustomization(inputs, layout, overlay_resources, components)
    )
    files[layout.release] = generated(_release_record(inputs.release),
                                      "What is deployed; Argo CD never reads this file.")
    return dict(sorted(files.items()))


PRE_STOP_SECONDS = 5


def _base(inputs: AppInputs, layout: AppLayout) -> Files:
    release, config = inputs.release, inputs.release.config
    container: dict[str, Any] = {"name": "web", "image": layout.app}
    if release.start_command:
        # The start command is in the manifest so that a reviewer sees what will run.
        container["command"] = ["/bin/sh", "-c", f"exec {release.start_command}"]
    container["ports"] = [{"name": "http", "containerPort": config.port, "protocol": "TCP"}]
    container["env"] = [{"name": "PORT", "value": str(config.port)}]
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": layout.config_map}}]
    if inputs.app.secrets:
        env_from.append({"secretRef": {"name": layout.secret}})
    container["envFrom"] = env_from
    probe: dict[str, Any]
    if config.healthcheck:
        probe = {"httpGet": {"path": config.healthcheck, "port": "http"}}
    else:
        probe = {"tcpSocket": {"port": "http"}}
    container["startupProbe"] = {**probe, "periodSeconds": 2, "failureThreshold": 60}
    container["readinessProbe"] = {**probe, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3}
    container["livenessProbe"] = {**probe, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3}
    container["resources"] = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    container["securityContext"] = {"allowPrivilegeEscalation": False}
    # A terminating pod leaves the Service's endpoints at the moment it gets SIGTERM, but the ingress
    # controller learns that a moment later and keeps sending it requests: serve on for a few seconds
    # (the kubelet's own sleep, so the image needs no `sleep` binary; Kubernetes 1.30+).
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": layout.service_account,
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if config.dockerfile is None:
        # Images built from a runtime plugin run as a non-root user; an app's own Dockerfile may not.
        pod_spec["securityContext"] = {"runAsNonRoot": True}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": layout.deployment, "labels": layout.labels()},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": layout.selector()},
            # Zero downtime: a new pod must be ready before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": layout.labels()}, "spec": pod_spec},
        },
    }
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
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["serviceaccount.yaml", "deployment.yaml", "service.yaml"],
    }
    start = release.start_command_source
    return {
        f"{layout.base}/deployment.yaml": generated(
            deployment, f"Start command ({start}): {release.start_command or 'the image CMD'}"),
        f"{layout.base}/service.yaml": generated(service),
        f"{layout.base}/serviceaccount.yaml": generated(service_account),
        f"{layout.base}/kustomization.yaml": generated(kustomization),
    }


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
        patch = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": layout.deployment},
            "spec": {"template": {"spec": {"containers": [{
                "name": "web",
                "env": [
                    {"name": var, "valueFrom": {"secretKeyRef": {"name": creds["secret"], "key": ref["secret_key"]}}}
                    for var, ref in env.items()
                ],
            }]}}},
        }
        files[f"{root}/app-env-patch.yaml"] = generated(
            patch, f"Connection settings the {addon.name} add-on gives the app.")
        kustomization["patches"] = [{"path": "app-env-patch.yaml"}]
    files[f"{root}/kustomization.yaml"] = generated(kustomization)
    return files


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
    if settings.cluster_issuer:
        metadata["annotations"] = {"cert-manager.io/cluster-issuer": settings.cluster_issuer}
        spec["tls"] = [{"hosts": hosts, "secretName": layout.tls_secret}]
    backend = {"service": {"name": layout.service, "port": {"name": "http"}}}
    spec["rules"] = [
        {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
        for host in hosts
    ]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def _config_patch(layout: AppLayout, checksum: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": layout.deployment},
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
    out["replicas"] = [{"name": layout.deployment, "count": inputs.app.replicas}]
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

