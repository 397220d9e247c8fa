"""After the GitOps commit: ask Argo CD to look now, follow the rollout, say when the release is live.

A deploy used to end at "committed", leaving the pusher to find out from the cluster whether the release
ever served. With a ``cluster:`` block in ``cupaas.yaml`` a deploy goes on until the release is **live**:

1. *Refresh at once.* Argo CD polls git every 3 minutes by default. cupaas annotates the app's
   Application with ``argocd.argoproj.io/refresh: normal`` through the Kubernetes API (and, while the
   Application does not exist yet, the ApplicationSet ``cupaas-apps`` with
   ``argocd.argoproj.io/application-set-refresh: "true"``), which makes the controllers compare with git
   now. The API route was chosen over Argo CD's webhook endpoint: it needs no argocd-server, no webhook
   secret, and the same credentials as following the rollout; its RBAC is one extra verb (``patch`` on
   Applications and ApplicationSets in Argo CD's namespace).
2. *Follow the rollout*: the Application synced at exactly the GitOps commit and Healthy, the web
   Deployment's pods at the new image digest and ready, then the app's URL answering (``GET`` of its
   health check path, or ``/``, below 400), all within ``rollout_timeout``.
3. *Fail with the reason*: a sync operation that failed, Argo CD's error conditions, a new pod whose
   container waits in CrashLoopBackOff / ImagePullBackOff / ErrImagePull / CreateContainerConfigError /
   InvalidImageName (with the last log lines of the crashed container), or the timeout with what was
   last seen. A failure here never repeats the GitOps commit; the previous release keeps serving (the
   Deployment's rolling update never removes a ready pod before its replacement is ready).

Cluster access: ``cluster.kubeconfig`` (a path), else ``$KUBECONFIG``, else the in-cluster service
account, else ``~/.kube/config``. ``cluster.ingress`` (optional) is where the URL check is sent with a
``Host: <app>.<domain>`` header, for clusters whose app URLs do not resolve from where cupaas runs
(the local cluster: ``http://127.0.0.1:17080``); without it the check requests ``https://<app>.<domain>``.
"""

from __future__ import annotations

import http.client
import importlib
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import CupaasError
from .loading import PLATFORM_FILE, load_platform_raw

Log = Callable[[str], None]
# A container waiting for one of these has failed: the kubelet only backs off after failures.
WAITING_FAILURES = ("CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName")
# These pass by themselves often (the Secret a SealedSecret becomes is not there yet when the first pod is
# made: CreateContainerConfigError): a failure only when they last WAITING_GRACE seconds.
WAITING_TRANSIENT = ("CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "RunContainerError")
WAITING_GRACE = 60.0
REFRESH = "argocd.argoproj.io/refresh"
APPSET_REFRESH = "argocd.argoproj.io/application-set-refresh"
APPLICATION_SET = "cupaas-apps"  # gitops-repo-template/argocd/applicationset.yaml.j2
LOG_LINES = 20


def _kubernetes(module: str = "kubernetes") -> Any:
    """The kubernetes client package, untyped on purpose: its models make every field Optional."""
    return importlib.import_module(module)


def _api_exception() -> Any:
    return _kubernetes("kubernetes.client.exceptions").ApiException


class ClusterUnavailable(CupaasError):
    """The Kubernetes API cannot be reached with the configured credentials."""


@dataclass(frozen=True)
class ClusterSettings:
    """``cluster:`` of cupaas.yaml: where to follow rollouts (its schema is in cupaas.schema.json)."""

    kubeconfig: str | None = None
    argocd_namespace: str = "argocd"
    rollout_timeout: float = 300.0
    ingress: str | None = None


def cluster_settings(control_dir: Path) -> ClusterSettings | None:
    """The ``cluster:`` block of a (validated) control repo's cupaas.yaml, or None when it has none."""
    path = Path(control_dir) / PLATFORM_FILE
    # Read as the loader reads it (bounded, refused with file and field), since `deploy --wait` asks
    # before anything else has validated the file.
    raw = load_platform_raw(Path(control_dir), str(path)).get("cluster")
    if not isinstance(raw, dict):
        return None
    return ClusterSettings(kubeconfig=raw.get("kubeconfig"), argocd_namespace=raw.get("argocd_namespace", "argocd"),
                           rollout_timeout=float(raw.get("rollout_timeout", 300)), ingress=raw.get("ingress"))


@dataclass
class LiveResult:
    """How a rollout ended: ``state`` "live" or "failed", and what the job record and the forge are told."""

    state: str
    url: str
    health: str | None = None
    live_at: str | None = None
    reason: str | None = None  # one line, for the job's error and the forge's failure status
    argocd_message: str | None = None
    pod_reason: str | None = None
    pod_log: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in {"url": self.url, "health": self.health, "live_at": self.live_at,
                                  "argocd_message": self.argocd_message, "pod_reason": self.pod_reason,
                                  "pod_log": self.pod_log or None}.items() if v is not None}


def api_client(settings: ClusterSettings) -> Any:
    """A kubernetes ApiClient from the settings (see the module docstring for the order)."""
    client, config = _kubernetes("kubernetes.client"), _kubernetes("kubernetes.config")
    ConfigException = _kubernetes("kubernetes.config.config_exception").ConfigException

    kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=os.path.expanduser(kubeconfig))
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except ConfigException:
            return config.new_client_from_config()
    except (ConfigException, OSError, ValueError) as e:
        where = kubeconfig or "the in-cluster service account or ~/.kube/config"
        raise ClusterUnavailable(f"cannot use {where} to reach the cluster: {e}; set cluster.kubeconfig in "
                                 f"{PLATFORM_FILE} or $KUBECONFIG") from None


class RolloutWatcher:
    """Follows one release of one app; ``clock`` and ``sleep`` are injectable for tests of the loop."""

    def __init__(self, settings: ClusterSettings, api: Any, log: Log, *, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        client = _kubernetes("kubernetes.client")
        self.settings = settings
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.log = log
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._waiting_since: dict[tuple[str, str], float] = {}

    # --- 1. refresh ---------------------------------------------------------------------------------
    def refresh(self, application: str) -> None:
        """Ask Argo CD to compare with git now (the ApplicationSet too while the Application is missing)."""
        ApiException = _api_exception()

        ns = self.settings.argocd_namespace
        patch = {"metadata": {"annotations": {REFRESH: "normal"}}}
        try:
            self.custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", ns, "applications", application,
                                                       patch)
            return
        except ApiException as e:
            if e.status != 404:
                raise self._api_error(e, f"annotating Application {ns}/{application}") from None
        try:
            self.custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", ns, "applicationsets",
                                                       APPLICATION_SET,
                                                       {"metadata": {"annotations": {APPSET_REFRESH: "true"}}})
        except ApiException as e:
            if e.status != 404:
                raise self._api_error(e, f"annotating ApplicationSet {ns}/{APPLICATION_SET}") from None

    # --- 2. follow ----------------------------------------------------------------------------------
    def follow(self, *, app: str, environment: str, gitops_commit: str, image_digest: str, url: str) -> LiveResult:
        """Poll until the release is live or has failed, within ``rollout_timeout``."""
        ApiException = _api_exception()

        application, namespace = f"{app}-{environment}", f"{app}-{environment}"
        since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        start = self.clock()
        deadline = start + self.settings.rollout_timeout
        result = LiveResult(state="failed", url=url)
        last_seen = "the Application does not exist yet"
        shown = ""
        refreshed_at = -1e9
        while True:
            now = self.clock()
            result.seconds = now - start
            if now > deadline:
                result.reason = (f"not live within {self.settings.rollout_timeout:g}s of the GitOps commit "
                                 f"{gitops_commit[:12]} (last seen: {last_seen})")
                return result
            try:
                if now - refreshed_at > 15:  # again now and then: the first may land before the repo server sees git
                    self.refresh(application)
                    refreshed_at = now
                found = self._application(application)
                status = (found or {}).get("status", {})
                sync, health = status.get("sync", {}), status.get("health", {})
                result.health = health.get("status")
                failure = self._sync_failure(status, gitops_commit, since)
                if failure:
                    result.argocd_message, result.reason = failure, f"Argo CD: {failure}"
                    result.pod_log = self._failed_hook_log(namespace, status)
                    return result
                at_commit = sync.get("revision") == gitops_commit
                if found is not None:
                    last_seen = (f"sync {sync.get('status', '-')} at {str(sync.get('revision') or '-')[:12]}, "
                                 f"health {health.get('status', '-')}")
                if at_commit:
                    pod_failure = self._pod_failure(namespace, app, image_digest)
                    if pod_failure:
                        result.pod_reason, result.pod_log = pod_failure
                        tail = _telling_line(result.pod_log)
                        result.reason = f"the new pod is in {result.pod_reason}" + (f": {tail}" if tail else "")
                        result.argocd_message = health.get("message")
                        return result
                    rollout, check_path = self._rollout(namespace, app, image_digest)
                    if rollout:
                        last_seen += f"; {rollout}"
                    elif sync.get("status") == "Synced" and health.get("status") == "Healthy":
                        answer = self._answers(url, check_path)
                        if answer is None:
                            result.state, result.health = "live", "Healthy"
                            result.live_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                            result.seconds = self.clock() - start
                            return result
                        last_seen += f"; {answer}"
            except ApiException as e:
                last_seen = f"the Kubernetes API answered {e.status} {e.reason}"
            except (OSError, ValueError) as e:  # the API server unreachable (urllib3 errors are OSErrors)
                last_seen = f"the Kubernetes API is unreachable: {type(e).__name__}: {e}"
            if last_seen != shown:
                self.log(f"       {last_seen}")
                shown = last_seen
            self.sleep(self.interval)

    def _application(self, name: str) -> dict[str, Any] | None:
        ApiException = _api_exception()

        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                "argoproj.io", "v1alpha1", self.settings.argocd_namespace, "applications", name)
            return found
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    @staticmethod
    def _sync_failure(status: dict[str, Any], gitops_commit: str, since: datetime | None = None) -> str | None:
        """Argo CD's reason when the sync of this commit failed: an operation that ran this revision, or
        (Argo CD does not always record the revision of a failed operation) one started after ``since``,
        the GitOps commit's time; or an error condition of the Application."""
        operation = status.get("operationState") or {}
        synced = (operation.get("syncResult") or {}).get("revision") or (operation.get("operation", {})
                                                                           .get("sync", {}).get("revision"))
        started = _timestamp(operation.get("startedAt"))
        ours = synced == gitops_commit or (since is not None and started is not None and started >= since)
        if ours and operation.get("phase") in ("Failed", "Error"):
            return _one_line(operation.get("message") or f"the sync operation ended {operation.get('phase')}")
        # A failed hook (the release phase) fails the sync even while Argo CD retries it (phase Running).
        for resource in (operation.get("syncResult") or {}).get("resources") or [] if ours else []:
            if resource.get("hookPhase") in ("Failed", "Error"):
                return _one_line(f"the {resource.get('kind')} {resource.get('name')} failed: "
                                 f"{resource.get('message') or resource.get('hookPhase')}")
        for condition in status.get("conditions") or []:
            if condition.get("type") in ("ComparisonError", "InvalidSpecError", "SyncError"):
                return _one_line(f"{condition.get('type')}: {condition.get('message', '')}")
        return None

    def _failed_hook_log(self, namespace: str, status: dict[str, Any]) -> list[str]:
        """The last lines of the pod of a failed hook Job (the release phase), when there is one."""
        ApiException = _api_exception()
        for resource in ((status.get("operationState") or {}).get("syncResult") or {}).get("resources") or []:
            if resource.get("kind") == "Job" and resource.get("hookPhase") in ("Failed", "Error"):
                try:
                    pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={resource['name']}")
                except ApiException:
                    return []
                for pod in pods.items:
                    return self._last_log_lines(namespace, pod.metadata.name, pod.spec.containers[0].name,
                                                previous=False)
        return []

    def _new_pods(self, namespace: str, app: str, digest: str) -> list[Any]:
        selector = f"app.kubernetes.io/name={app},app.kubernetes.io/component=web"
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p for p in pods if any(digest in (c.image or "") for c in p.spec.containers)]

    def _pod_failure(self, namespace: str, app: str, digest: str) -> tuple[str, list[str]] | None:
        now = self.clock()
        for pod in self._new_pods(namespace, app, digest):
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                reason = waiting.reason if waiting else None
                if reason in WAITING_TRANSIENT:
                    since = self._waiting_since.setdefault((pod.metadata.name, reason), now)
                    if now - since < WAITING_GRACE:
                        continue
                    message = _one_line(getattr(waiting, "message", None) or "")
                    return reason, [message] if message else []
                if reason in WAITING_FAILURES:
                    return reason, self._last_log_lines(namespace, pod.metadata.name, status.name,
                                                        previous=status.restart_count > 0)
        return None

    def _last_log_lines(self, namespace: str, pod: str, container: str, previous: bool) -> list[str]:
        ApiException = _api_exception()

        try:
            text = self.core.read_namespaced_pod_log(pod, namespace, container=container, previous=previous,
                                                     tail_lines=LOG_LINES)
        except ApiException:
            return []
        return [line[:500] for line in str(text).splitlines()[-LOG_LINES:]]

    def _rollout(self, namespace: str, app: str, digest: str) -> tuple[str | None, str]:
        """What the web Deployment still waits for (None when all its pods run the new digest, ready), and
        the path to check the URL with: its readiness probe's (the app's health check), else ``/``."""
        ApiException = _api_exception()

        try:
            deployment = self.apps.read_namespaced_deployment(app, namespace)
        except ApiException as e:
            if e.status == 404:
                return "the Deployment does not exist yet", "/"
            raise
        containers = deployment.spec.template.spec.containers
        probe = containers[0].readiness_probe if containers else None
        path = (probe.http_get.path if probe and probe.http_get and probe.http_get.path else None) or "/"
        if not any(digest in (c.image or "") for c in containers):
            return "the Deployment is not at the new image yet", path
        want = deployment.spec.replicas if deployment.spec.replicas is not None else 1
        status = deployment.status
        if (status.observed_generation or 0) < (deployment.metadata.generation or 0):
            return "the Deployment's change is not observed yet", path
        if (status.updated_replicas or 0) < want or (status.available_replicas or 0) < want \
                or (status.replicas or 0) > want:
            return (f"rollout: {status.updated_replicas or 0}/{want} updated, "
                    f"{status.available_replicas or 0} available, {status.replicas or 0} in all"), path
        return None, path

    def _answers(self, url: str, path: str) -> str | None:
        """None when the app's URL answers below 400, else what it did."""
        target = urllib.parse.urlsplit(url)
        host = target.hostname or ""
        if self.settings.ingress:
            entry = urllib.parse.urlsplit(self.settings.ingress)
            scheme, address, port = entry.scheme, entry.hostname or "127.0.0.1", entry.port
        else:
            scheme, address, port = target.scheme, host, target.port
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(address, port or 443, timeout=5, context=context)
        else:
            conn = http.client.HTTPConnection(address, port or 80, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host, "User-Agent": "cupaas-rollout-check"})
            response = conn.getresponse()
            response.read(65536)
        except OSError as e:
            return f"GET {url}{path}: {type(e).__name__}: {e}"
        finally:
            conn.close()
        if response.status < 400:
            return None
        return f"GET {url}{path} answered {response.status}"

    @staticmethod
    def _api_error(e: Any, what: str) -> ClusterUnavailable:
        hint = " (the account needs patch on applications and applicationsets)" if e.status == 403 else ""
        return ClusterUnavailable(f"{what}: the Kubernetes API answered {e.status} {e.reason}{hint}")


_ERROR_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception)\b:|\bpanic:|\bfatal\b", re.IGNORECASE)


def _telling_line(lines: list[str]) -> str:
    """The log line that says why: the last one naming an error (a Python exception, a panic), else the last."""
    lines = [line.strip() for line in lines if line.strip()]
    return next((line for line in reversed(lines) if _ERROR_LINE.search(line)), lines[-1] if lines else "")


def _timestamp(text: object) -> datetime | None:
    """An RFC 3339 time of the Kubernetes API (``2026-12-02T03:01:12Z``), or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 500 else text[:499] + "…"


def status_lines(settings: ClusterSettings, api: Any, app: str, environment: str, url: str) -> list[str]:
    """What `cupaas status` prints: the Application's sync and health, the web image, the pods."""
    client = _kubernetes("kubernetes.client")
    ApiException = _api_exception()
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    name = f"{app}-{environment}"
    lines = [f"app:         {app} (namespace {name})", f"url:         {url}"]
    try:
        found = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", settings.argocd_namespace,
                                                    "applications", name)
        status = found.get("status", {})
        sync, health = status.get("sync", {}), status.get("health", {})
        lines.append(f"application: {settings.argocd_namespace}/{name}: {sync.get('status', '-')} at "
                     f"{str(sync.get('revision') or '-')[:12]}, {health.get('status', '-')}"
                     + (f" ({health['message']})" if health.get("message") else ""))
    except ApiException as e:
        if e.status != 404:
            raise ClusterUnavailable(f"reading Application {name}: the Kubernetes API answered {e.status}") from None
        lines.append(f"application: {settings.argocd_namespace}/{name} does not exist (not deployed yet?)")
        return lines
    try:
        deployment = apps.read_namespaced_deployment(app, name)
        lines.append(f"image:       {deployment.spec.template.spec.containers[0].image}")
        ready, want = deployment.status.ready_replicas or 0, deployment.spec.replicas
        lines.append(f"web:         {ready}/{want} ready")
    except ApiException as e:
        if e.status != 404:
            raise ClusterUnavailable(f"reading Deployment {name}/{app}: the Kubernetes API answered {e.status}") \
                from None
        lines.append("web:         no Deployment yet")
    pods = core.list_namespaced_pod(name, label_selector=f"app.kubernetes.io/part-of={app}").items
    lines.append("pods:" if pods else "pods:        none")
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        statuses = pod.status.container_statuses or []
        ready = sum(1 for c in statuses if c.ready)
        restarts = sum(c.restart_count for c in statuses)
        waiting = next((c.state.waiting.reason for c in statuses if c.state and c.state.waiting), None)
        lines.append(f"  {pod.metadata.name:<40} {waiting or pod.status.phase:<18} ready {ready}/{len(statuses)}  "
                     f"restarts {restarts}")
    return lines
