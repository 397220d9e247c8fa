"""The manifest validator and kustomize helpers fail when they should, and pass what the cluster accepts."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import k8s_validation
import pytest
import yaml

SAMPLES = {
    "deployment": """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: shop
          namespace: shop-production
          labels: {app.kubernetes.io/name: shop, app.kubernetes.io/managed-by: cupaas}
          annotations: {argocd.argoproj.io/sync-wave: "1"}
        spec:
          replicas: 2
          selector: {matchLabels: {app.kubernetes.io/name: shop}}
          template:
            metadata: {labels: {app.kubernetes.io/name: shop}}
            spec:
              serviceAccountName: shop
              containers:
              - name: web
                image: r.example/shop@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
                command: [gunicorn, app:app]
                env: [{name: PORT, value: "8080"}]
                envFrom: [{configMapRef: {name: shop-env}}, {secretRef: {name: shop-env}}]
                ports: [{name: http, containerPort: 8080}]
                readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 10}
                resources: {requests: {cpu: 100m, memory: 128Mi}}
    """,
    "service": """
        apiVersion: v1
        kind: Service
        metadata: {name: shop, namespace: shop-production}
        spec:
          selector: {app.kubernetes.io/name: shop}
          ports: [{name: http, port: 80, targetPort: http}]
    """,
    "ingress": """
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          name: shop
          annotations: {cert-manager.io/cluster-issuer: letsencrypt-prod}
        spec:
          ingressClassName: nginx
          tls: [{hosts: [shop.apps.example.com], secretName: shop-tls}]
          rules:
          - host: shop.apps.example.com
            http:
              paths:
              - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {name: http}}}}
    """,
    "configmap": """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: shop-env-7mh5hth542}
        data: {LOG_LEVEL: info, EMPTY: ""}
    """,
    "serviceaccount": """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: shop}
        automountServiceAccountToken: false
    """,
    "statefulset": """
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: mongodb}
        spec:
          serviceName: mongodb
          replicas: 1
          selector: {matchLabels: {app.kubernetes.io/component: mongodb}}
          persistentVolumeClaimRetentionPolicy: {whenDeleted: Retain, whenScaled: Retain}
          template:
            metadata: {labels: {app.kubernetes.io/component: mongodb}}
            spec:
              securityContext: {fsGroup: 999}
              containers:
              - name: mongodb
                image: mongo:7
                ports: [{name: mongodb, containerPort: 27017}]
                env:
                - name: MONGO_INITDB_ROOT_PASSWORD
                  valueFrom: {secretKeyRef: {name: mongodb-auth, key: MONGO_INITDB_ROOT_PASSWORD}}
                readinessProbe: {tcpSocket: {port: 27017}}
                volumeMounts: [{name: data, mountPath: /data/db}]
          volumeClaimTemplates:
          - metadata: {name: data}
            spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}
    """,
    "sealedsecret": """
        apiVersion: bitnami.com/v1alpha1
        kind: SealedSecret
        metadata: {name: shop-env, namespace: shop-production}
        spec:
          encryptedData: {API_TOKEN: AgBy3i4OJSWK+PiTySYZZA==}
          template:
            metadata: {name: shop-env, namespace: shop-production}
            type: Opaque
    """,
    "application": """
        apiVersion: argoproj.io/v1alpha1
        kind: Application
        metadata:
          name: root
          namespace: argocd
          finalizers: [resources-finalizer.argocd.argoproj.io]
        spec:
          project: default
          source:
            repoURL: https://git.example.com/org/gitops.git
            targetRevision: HEAD
            path: argocd
            directory: {recurse: true}
          destination: {server: https://kubernetes.default.svc, namespace: argocd}
          syncPolicy: {automated: {prune: true, selfHeal: true}}
    """,
    "applicationset": """
        apiVersion: argoproj.io/v1alpha1
        kind: ApplicationSet
        metadata: {name: apps, namespace: argocd}
        spec:
          goTemplate: true
          goTemplateOptions: ["missingkey=error"]
          generators:
          - git:
              repoURL: https://git.example.com/org/gitops.git
              revision: HEAD
              directories: [{path: apps/*/overlays/production}]
          template:
            metadata: {name: '{{index .path.segments 1}}-production'}
            spec:
              project: cupaas
              source:
                repoURL: https://git.example.com/org/gitops.git
                targetRevision: HEAD
                path: '{{.path.path}}'
              destination:
                server: https://kubernetes.default.svc
                namespace: '{{index .path.segments 1}}-production'
              syncPolicy:
                automated: {prune: true, selfHeal: true}
                syncOptions: [CreateNamespace=true]
    """,
    "appproject": """
        apiVersion: argoproj.io/v1alpha1
        kind: AppProject
        metadata: {name: cupaas, namespace: argocd}
        spec:
          description: Apps deployed by cupaas
          sourceRepos: [https://git.example.com/org/gitops.git]
          destinations: [{server: https://kubernetes.default.svc, namespace: '*-production'}]
          clusterResourceWhitelist: [{group: "", kind: Namespace}]
    """,
}

DELETE = object()


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of one of the valid SAMPLES."""
    obj: dict[str, Any] = yaml.safe_load(textwrap.dedent(SAMPLES[name]))
    return obj


def edited(name: str, edits: dict[str, Any]) -> Callable[[], Any]:
    """A factory for SAMPLES[name] with `edits` applied: dotted path -> new value (or DELETE)."""

    def make() -> Any:
        obj = sample(name)
        for path, value in edits.items():
            *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
            target: Any = obj
            for part in parents:
                target = target[part]
            if value is DELETE:
                del target[last]
            else:
                target[last] = value
        return obj

    return make


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_validate_object_valid_sample_passes(name: str) -> None:
    k8s_validation.validate_object(sample(name))


def test_samples_cover_every_vendored_crd_kind() -> None:
    covered = {(obj["apiVersion"], obj["kind"]) for obj in map(sample, SAMPLES)}
    assert set(k8s_validation.crd_kinds()) <= covered


BAD_OBJECTS = [
    pytest.param(
        edited("deployment", {"foo": 1}),
        "(root): Additional properties are not allowed ('foo'",
        id="unknown-top-level-field",
    ),
    pytest.param(
        edited("deployment", {"spec.template.spec.containers.0.imagePullPolicy2": "Always"}),
        "spec.template.spec.containers[0]: Additional properties are not allowed ('imagePullPolicy2'",
        id="unknown-field-in-container",
    ),
    pytest.param(
        edited("deployment", {"spec.replicass": 2}),
        "spec: Additional properties are not allowed",
        id="unknown-field-in-spec",
    ),
    pytest.param(
        edited("deployment", {"spec.replicas": "2"}),
        "spec.replicas: '2' is not of type 'integer'",
        id="wrong-type-replicas",
    ),
    pytest.param(
        edited("service", {"spec.ports.0.port": 80.5}),
        "spec.ports[0].port: 80.5 is not of type",
        id="wrong-type-port",
    ),
    pytest.param(
        edited("deployment", {"spec.template.spec.containers.0.name": DELETE}),
        "spec.template.spec.containers[0]: 'name' is a required property",
        id="missing-container-name",
    ),
    pytest.param(
        edited("deployment", {"spec.selector": DELETE}),
        "spec: 'selector' is a required property",
        id="missing-selector",
    ),
    pytest.param(
        edited("statefulset", {"spec.volumeClaimTemplates.0.spec.size": "5Gi"}),
        "spec.volumeClaimTemplates[0].spec: Additional properties",
        id="unknown-field-in-claim-template",
    ),
    pytest.param(
        edited("deployment", {"apiVersion": "example.com/v1", "kind": "Widget"}),
        "no schema for kind 'Widget' in apiVersion 'example.com/v1'",
        id="unknown-kind",
    ),
    pytest.param(
        edited("deployment", {"apiVersion": "extensions/v1beta1"}),
        "no schema for kind 'Deployment' in apiVersion 'extensions/v1beta1'",
        id="removed-api-version",
    ),
    pytest.param(edited("deployment", {"kind": DELETE}), "apiVersion and kind must both be set", id="missing-kind"),
    pytest.param(lambda: ["not", "a", "mapping"], "must be a mapping", id="not-a-mapping"),
    pytest.param(
        edited("sealedsecret", {"spec.encryptedData": DELETE}),
        "spec: 'encryptedData' is a required property",
        id="sealedsecret-without-encrypteddata",
    ),
    pytest.param(
        edited("sealedsecret", {"metadata.labelz": {}}),
        "metadata: Additional properties are not allowed ('labelz'",
        id="crd-unknown-metadata-field",
    ),
    pytest.param(
        edited("applicationset", {"spec.template.spec.syncPolicy.selfHeal": True}),
        "spec.template.spec.syncPolicy: Additional properties are not allowed ('selfHeal'",
        id="applicationset-unknown-field",
    ),
    pytest.param(
        edited("application", {"spec.destination": DELETE}),
        "spec: 'destination' is a required",
        id="application-without-destination",
    ),
    pytest.param(
        edited("service", {"metadata.name": "1shop"}),
        "metadata.name: '1shop' must be a DNS-1035 label",
        id="service-name-starts-with-digit",
    ),
    pytest.param(
        edited("configmap", {"metadata.name": "Shop_Env"}),
        "metadata.name: 'Shop_Env' must be a DNS-1123",
        id="name-not-dns",
    ),
    pytest.param(edited("configmap", {"metadata.name": DELETE}), "metadata: needs a name", id="missing-name"),
    pytest.param(edited("configmap", {"metadata": DELETE}), "metadata: must be a mapping", id="missing-metadata"),
    pytest.param(edited("configmap", {"metadata": None}), "metadata: must be a mapping", id="null-metadata"),
    pytest.param(
        edited("service", {"metadata.namespace": "Shop"}),
        "metadata.namespace: 'Shop' must be",
        id="namespace-not-dns",
    ),
    pytest.param(
        edited("service", {"metadata.labels": {"tier": "x" * 64}}),
        'metadata.labels["tier"]: value',
        id="label-value-too-long",
    ),
    pytest.param(
        edited("service", {"metadata.labels": {"bad key": "x"}}),
        "metadata.labels: key 'bad key'",
        id="label-key-invalid",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_OBJECTS)
def test_validate_object_invalid_object_fails(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        k8s_validation.validate_object(make())


def test_validate_object_error_names_kind_name_and_namespace() -> None:
    with pytest.raises(AssertionError, match=re.escape("Deployment/shop in namespace shop-production (apps/v1)")):
        k8s_validation.validate_object(edited("deployment", {"spec.replicass": 2})())


def test_validate_documents_returns_objects_skipping_empty_documents() -> None:
    text = "---\n" + yaml.safe_dump(sample("service")) + "---\n---\n" + yaml.safe_dump(sample("configmap"))
    docs = k8s_validation.validate_documents(text)
    assert [d["kind"] for d in docs] == ["Service", "ConfigMap"]


def test_validate_documents_reports_every_invalid_document() -> None:
    text = yaml.safe_dump_all([sample("service"), {**sample("configmap"), "x": 1}, {**sample("service"), "y": 1}])
    with pytest.raises(AssertionError) as failure:
        k8s_validation.validate_documents(text)
    assert "document 1: ConfigMap/" in str(failure.value)
    assert "document 2: Service/" in str(failure.value)


def test_validate_documents_reads_bare_equals_sign_as_string() -> None:
    docs = k8s_validation.validate_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {OP: =}\n")
    assert docs[0]["data"] == {"OP": "="}


def write_overlay(root: Path, namespace: str) -> Path:
    """A base (Deployment + Service) and one overlay setting namespace, image, replicas and a generator."""
    files = {
        "base/kustomization.yaml": {"resources": ["deployment.yaml", "service.yaml"]},
        "base/deployment.yaml": sample("deployment"),
        "base/service.yaml": sample("service"),
        f"overlays/{namespace}/kustomization.yaml": {
            "namespace": namespace,
            "resources": ["../../base"],
            "images": [{"name": "r.example/shop", "newTag": "1.10"}],
            "replicas": [{"name": "shop", "count": 3}],
            "configMapGenerator": [{"name": "shop-env", "literals": ["LOG_LEVEL=info"]}],
            "labels": [{"pairs": {"app.kubernetes.io/part-of": "cupaas"}}],
        },
    }
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(yaml.safe_dump(content))
    return root / "overlays" / namespace


def test_kustomize_build_overlay_renders_valid_objects(tmp_path: Path) -> None:
    docs = k8s_validation.validate_documents(k8s_validation.kustomize_build(write_overlay(tmp_path, "shop-dev")))
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["ConfigMap", "Deployment", "Service"]
    assert by_kind["Deployment"]["metadata"]["namespace"] == "shop-dev"
    assert by_kind["Deployment"]["spec"]["replicas"] == 3
    assert by_kind["ConfigMap"]["metadata"]["name"].startswith("shop-env-")


def test_kustomize_build_broken_kustomization_raises_with_kubectl_message(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(k8s_validation.KustomizeError, match=re.escape("missing.yaml: no such file or directory")):
        k8s_validation.kustomize_build(tmp_path)


def test_kustomize_build_missing_kubectl_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUPAAS_KUBECTL", str(tmp_path / "no-kubectl"))
    with pytest.raises(k8s_validation.KustomizeError, match="not found: run scripts/setup"):
        k8s_validation.kustomize_build(tmp_path)


def test_kustomize_build_many_builds_every_overlay_in_one_run(tmp_path: Path) -> None:
    overlays = [write_overlay(tmp_path, ns) for ns in ("shop-dev", "shop-production")]
    docs = k8s_validation.validate_documents(k8s_validation.kustomize_build_many(overlays))
    assert sorted({d["metadata"]["namespace"] for d in docs}) == ["shop-dev", "shop-production"]
    assert len(docs) == 6


def test_kustomize_build_many_without_directories_fails() -> None:
    with pytest.raises(ValueError, match="at least one"):
        k8s_validation.kustomize_build_many([])


def test_k8s_fixture_exposes_the_helpers(k8s: Any) -> None:
    assert k8s.validate_object is k8s_validation.validate_object
