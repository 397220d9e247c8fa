"""Strict offline checks of rendered Kubernetes objects, and `kubectl kustomize` runs, for the tests.

Built-in kinds are checked against the strict JSON Schemas of Kubernetes 1.32 bundled in the
kubernetes-validate package (unknown fields rejected). The package serves only as a schema bundle: its
own ``validate()`` re-reads 1.3 MB per call, so here the bundle is read once and each kind's validator
is built once, from a schema with its $refs inlined. Custom resources (SealedSecret, Argo CD kinds) are
checked against the schemas vendored in ``tests/schemas/``. An object of any other kind fails: nothing
passes unchecked.

The schemas say nothing about names, so ``metadata`` also gets the API server's name and label rules.

kubectl is ``$CUPAAS_KUBECTL`` (scripts/test sets it from scripts/setup), else ``kubectl`` on PATH.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

KUBERNETES_VERSION = "1.32"
CRD_SCHEMA_DIR = Path(__file__).parent / "schemas"
MIN_KUSTOMIZE_MAJOR = 5
KUSTOMIZE_TIMEOUT_SECONDS = 300

_BUNDLE = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json"
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Obj = dict[str, Any]


class KustomizeError(AssertionError):
    """`kubectl kustomize` refused to build; the message carries kubectl's stderr."""


# --- schemas -----------------------------------------------------------------------------------------


@functools.cache
def _builtin_bundle() -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """The bundle's definitions, and the definition name of each (apiVersion, kind) it has."""
    text = (importlib.resources.files("kubernetes_validate") / _BUNDLE).read_text(encoding="utf-8")
    definitions: dict[str, Any] = json.loads(text)["$defs"]
    kinds: dict[tuple[str, str], str] = {}
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            kinds[(api_version, gvk["kind"])] = name
    return definitions, kinds


def _inline(schema: Any, definitions: dict[str, Any], done: dict[str, Any]) -> Any:
    """`schema` with each `#/$defs/X` $ref replaced by definition X, every X inlined once and shared.

    Validating against the inlined schema skips jsonschema's per-$ref lookups: 30-50% faster here.
    Recursive definitions become cyclic dicts, which jsonschema walks only as deep as the instance.
    Walks schema keywords only, so a property *named* "$ref" (JSONSchemaProps has one) is left alone.
    """
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        if name not in done:
            done[name] = {}
            done[name].update(_inline(definitions[name], definitions, done))
        rest = {key: value for key, value in schema.items() if key not in ("$ref", "description")}
        return {"allOf": [done[name]], **_inline(rest, definitions, done)} if rest else done[name]
    out = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {prop: _inline(sub, definitions, done) for prop, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if key in out:
            out[key] = _inline(out[key], definitions, done)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_inline(sub, definitions, done) for sub in out[key]]
    return out


@functools.cache
def _builtin_validator(definition: str) -> jsonschema.protocols.Validator:
    definitions, _ = _builtin_bundle()
    return jsonschema.Draft202012Validator(_inline({"$ref": f"#/$defs/{definition}"}, definitions, {}))


@functools.cache
def _crd_schema_files() -> dict[tuple[str, str], Path]:
    """(apiVersion, kind) of each vendored CRD schema, read from the schema's own enums."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(CRD_SCHEMA_DIR.glob("*.json")):
        props = json.loads(path.read_text(encoding="utf-8"))["properties"]
        for api_version in props["apiVersion"]["enum"]:
            for kind in props["kind"]["enum"]:
                found[(api_version, kind)] = path
    return found


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    _, builtin = _builtin_bundle()
    if (api_version, kind) in builtin:
        return _builtin_validator(builtin[(api_version, kind)])
    path = _crd_schema_files().get((api_version, kind))
    if path is None:
        return None
    # No check_schema(): it takes ~6 s on the 380 KB ApplicationSet schema, which is checked upstream.
    return jsonschema.Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


def known_kinds() -> list[tuple[str, str]]:
    """Every (apiVersion, kind) this module can validate, sorted."""
    return sorted({*_builtin_bundle()[1], *_crd_schema_files()})


def crd_kinds() -> list[tuple[str, str]]:
    """The (apiVersion, kind) of each custom resource schema vendored in tests/schemas/, sorted."""
    return sorted(_crd_schema_files())


# --- validation --------------------------------------------------------------------------------------


def _path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(root)"


def _schema_problems(
    validator: jsonschema.protocols.Validator, instance: Any, prefix: tuple[str, ...]
) -> Iterator[str]:
    for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        # anyOf/oneOf failures say only "not valid under any of the given schemas": show the closest miss.
        detail = best_match(error.context) if error.context else None
        message = f"{error.message} ({detail.message})" if detail else error.message
        yield f"{_path((*prefix, *error.absolute_path))}: {message}"


def _name_rule(api_version: str, kind: str) -> tuple[re.Pattern[str], int, str] | None:
    """The API server's rule for metadata.name of a built-in kind (CRD schemas carry their own)."""
    if (api_version, kind) in _crd_schema_files():
        return None
    if api_version.startswith("rbac.authorization.k8s.io/"):
        return None  # RBAC names are path segments: `system:controller:x` is valid
    if (api_version, kind) == ("v1", "Service"):
        return _DNS1035_LABEL, 63, "a DNS-1035 label (lowercase letters, digits, '-'; starts with a letter)"
    if (api_version, kind) == ("v1", "Namespace"):
        return _DNS_LABEL, 63, "a DNS-1123 label (lowercase letters, digits, '-')"
    return _DNS_SUBDOMAIN, 253, "a DNS-1123 subdomain (lowercase letters, digits, '-', '.')"


def _qualified_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "prefix must be a DNS-1123 subdomain"
    if not (len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
        return "name part must be at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def _metadata_problems(api_version: str, kind: str, meta: Obj) -> Iterator[str]:
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        yield "metadata: needs a name (or generateName)"
    rule = _name_rule(api_version, kind)
    if isinstance(name, str) and rule and not (len(name) <= rule[1] and rule[0].fullmatch(name)):
        yield f"metadata.name: {name!r} must be {rule[2]}, at most {rule[1]} characters"
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and not (len(namespace) <= 63 and _DNS_LABEL.fullmatch(namespace)):
        yield f"metadata.namespace: {namespace!r} must be a DNS-1123 label, at most 63 characters"
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            problem = _qualified_key_problem(key)
            if problem:
                yield f"metadata.{field}: key {key!r}: {problem}"
            if (
                field == "labels"
                and isinstance(value, str)
                and not (len(value) <= 63 and _LABEL_VALUE.fullmatch(value))
            ):
                yield f"metadata.labels[{json.dumps(key)}]: value {value!r} must be <= 63 of [-A-Za-z0-9_.]"


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"document of type {type(obj).__name__}"
    meta = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "(no name)"
    where = f" in namespace {meta['namespace']}" if meta.get("namespace") else ""
    return f"{obj.get('kind', '(no kind)')}/{name}{where} ({obj.get('apiVersion', 'no apiVersion')})"


def _problems(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        return ["a Kubernetes object must be a mapping"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind must both be set to strings"]
    validator = _validator(api_version, kind)
    if validator is None:
        return [
            f"no schema for kind {kind!r} in apiVersion {api_version!r}: neither a Kubernetes "
            f"{KUBERNETES_VERSION} kind nor a CRD vendored in {CRD_SCHEMA_DIR}"
        ]
    problems = list(_schema_problems(validator, obj, ()))
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        # Built-in schemas make metadata optional and nullable; the API server needs it for the name.
        return [*problems, "metadata: must be a mapping with a name"]
    if (api_version, kind) in _crd_schema_files():
        # The CRD schemas leave metadata open; the API server holds all metadata to ObjectMeta.
        problems += _schema_problems(_builtin_validator(_OBJECT_META), meta, ("metadata",))
    return [*problems, *_metadata_problems(api_version, kind, meta)]


def _report(obj: Any, problems: list[str]) -> str:
    return f"{_describe(obj)} is invalid:\n" + "\n".join(f"  {problem}" for problem in problems)


def validate_object(obj: Obj) -> None:
    """Raise AssertionError naming the kind, name, field path and problem if `obj` is not valid."""
    problems = _problems(obj)
    if problems:
        raise AssertionError(_report(obj, problems))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader that reads a bare `=` as the string it is (PyYAML tags it `value` and then chokes)."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def validate_documents(yaml_text: str) -> list[Obj]:
    """Parse multi-document YAML, validate every object, and return them (empty documents skipped).

    Every invalid object is reported in one AssertionError, not just the first.
    """
    documents = [doc for doc in yaml.load_all(yaml_text, Loader=_Loader) if doc is not None]
    failures = [
        f"document {i}: {_report(doc, problems)}" for i, doc in enumerate(documents) if (problems := _problems(doc))
    ]
    if failures:
        raise AssertionError("\n".join(failures))
    return documents


# --- kustomize ---------------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl to run: $CUPAAS_KUBECTL, else `kubectl` on PATH."""
    return os.environ.get("CUPAAS_KUBECTL") or "kubectl"


def _run_kubectl(binary: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, check=False, timeout=KUSTOMIZE_TIMEOUT_SECONDS
        )
    except FileNotFoundError as e:
        raise KustomizeError(
            f"{binary!r} not found: run scripts/setup, or set CUPAAS_KUBECTL to a kubectl with kustomize v5+"
        ) from e


def kustomize_version() -> str:
    """The kustomize version built into kubectl (e.g. 'v5.5.0'); fails if older than v5."""
    return _kustomize_version_of(kubectl())


@functools.cache
def _kustomize_version_of(binary: str) -> str:
    done = _run_kubectl(binary, ["version", "--client"])
    match = re.search(r"^Kustomize Version: (v(\d+)\S*)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match or int(match[2]) < MIN_KUSTOMIZE_MAJOR:
        # kubectl <= 1.20 embeds kustomize 2.0.3, which knows neither `components` nor `labels`.
        raise KustomizeError(
            f"{binary} must embed kustomize v{MIN_KUSTOMIZE_MAJOR}+; it reports:\n"
            f"{(done.stdout + done.stderr).strip()}\nRun scripts/setup, or set CUPAAS_KUBECTL."
        )
    return match[1]


def kustomize_build(path: Path) -> str:
    """`kubectl kustomize PATH` → the rendered YAML; KustomizeError with kubectl's stderr on failure."""
    binary = kubectl()
    _kustomize_version_of(binary)
    done = _run_kubectl(binary, ["kustomize", str(path)])
    if done.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {path} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def kustomize_build_many(paths: Sequence[Path]) -> str:
    """Build many kustomizations in one kubectl run and return all their objects as one YAML stream.

    A temporary top-level kustomization lists them as resources: one run costs ~25 ms per overlay
    instead of ~70 ms for one process each. Their objects must not collide (same kind, namespace and
    name), which overlays with distinct namespaces guarantee; kubectl rejects the build otherwise.
    """
    if not paths:
        raise ValueError("kustomize_build_many needs at least one directory")
    with tempfile.TemporaryDirectory(prefix="cupaas-kustomize-") as tmp:
        top = Path(tmp).resolve()
        resources = [os.path.relpath(Path(p).resolve(), top) for p in paths]
        kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
        (top / "kustomization.yaml").write_text(yaml.safe_dump({**kustomization, "resources": resources}))
        return kustomize_build(top)
