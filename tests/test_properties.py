"""Properties of the input boundaries: whatever a file or a delivery holds, it loads or is refused with
cupaas's own error (CupaasError, so a message with file and field, or a 4xx), never another exception.

Each target is a plain ``check_*`` function and a strategy, in TARGETS; the suite runs them with a small,
fixed budget and scripts/fuzz runs the same pairs for minutes. Inputs are structured (documents built from
mappings, lists and scalars of odd types, valid documents mutated, YAML and TOML tricks, raw bytes), so
they reach past the first syntax check.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from sealing_support import TEST_KEY_DIR
from test_webhook_events import BY_ID, raw

from generator.errors import CupaasError
from generator.loading import load_control_repo, parse_app_config
from generator.runtimes import READERS, DependencySet
from generator.runtimes.dependencies import _read_dependencies
from generator.source import DirectorySource
from webhook.app import AppKeyring
from webhook.events import Ignored, PushEvent, claimed_urls, parse_webhook

SUITE = settings(max_examples=60, derandomize=True, deadline=None, database=None)

# --- documents: scalars of every type YAML and TOML readers produce, nested ------------------------------

ODD_TEXT = st.sampled_from([
    "", " ", "\n", "x\n", "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028", "\ufffe", "../../etc/passwd", "/dev/zero",
    "a" * 300, "1e400", "0x10", "~", "null", "yes", "{", "*a", "&a", "!!python/object:os.system",
    "tasks", "python", "main", "https://git.example.com/tasks.git", "127.0.0.1:5000/cupaas", "mongodb",
    "sealing-cert.pem", "http://127.0.0.1:3141/simple/", "AgA" + "B" * 100, "flask", "==1.0", "; python_version",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), ODD_TEXT,
)
KEYS = st.one_of(ODD_TEXT, st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())


def documents(keys: st.SearchStrategy[Any] = KEYS) -> st.SearchStrategy[Any]:
    return st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn, base: Any, keys: st.SearchStrategy[Any] = KEYS) -> Any:
    """``base`` (a valid document) with a few values replaced, keys dropped or added, anywhere inside."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 4))):  # 0: the valid document itself
        node, depth = doc, draw(st.integers(0, 4))
        for _ in range(depth):
            children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
            containers = [c for c in children if isinstance(c, dict | list)]
            if not containers:
                break
            node = containers[draw(st.integers(0, len(containers) - 1))]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if isinstance(node, dict) and node and action != "add":
            key = draw(st.sampled_from(sorted(node, key=str)))
            if action == "drop":
                del node[key]
            else:
                node[key] = draw(documents(keys))
        elif isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(sorted(map(str, base)) if isinstance(base, dict) else ["x"]), keys))
                 ] = draw(documents(keys))
        elif isinstance(node, list) and node and action == "replace":
            node[draw(st.integers(0, len(node) - 1))] = draw(documents(keys))
        elif isinstance(node, list):
            node.append(draw(documents(keys)))
    return doc


# YAML that a dump of plain values never shows: anchors and aliases (a "billion laughs" too), merge keys,
# tags, complex keys, dates, documents and directives.
YAML_TRICKS = st.sampled_from([
    "x: &a [1, 2]\ny: *a\n", "<<: {domain: x}\n", "x: !!binary aGk=\n", "x: !!set {a, b}\n", "x: 2001-12-14\n",
    "2001-12-14: x\n", "? [a, b]\n: c\n", "x: !!python/object:os.system a\n", "--- a\n--- b\n", "%YAML 1.1\n---\n",
    "x: &r [*r]\n", "x: !!float 1\n", "x: !!int '7'\n", "x: .nan\n", "x: -.inf\n", "x: 0o17\n", "x: 1_000\n",
    "x: 0b101\n", "x: 12:30:00\n", "x: !custom 1\n", "x: |\n  a\n  b\n", "x: >-\n  folded\n", "\ufeffx: 1\n",
    "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 8)),
])


def yaml_texts(base: dict[str, Any]) -> st.SearchStrategy[str]:
    def dump(doc: Any) -> str:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)

    dumped = st.one_of(mutated(base), documents()).map(dump)
    spliced = st.tuples(mutated(base).map(dump), YAML_TRICKS, st.booleans()).map(
        lambda t: t[1] + t[0] if t[2] else t[0] + t[1])
    return st.one_of(dumped, dumped, spliced, YAML_TRICKS, st.text(max_size=80),
                     st.binary(max_size=80).map(lambda b: b.decode("utf-8", "replace")))


# --- targets -----------------------------------------------------------------------------------------------

PLATFORM = {
    "domain": "apps.example.com", "registry": "127.0.0.1:5000/cupaas", "environment": "production",
    "gitops": {"repo": "file:///srv/gitops.git", "branch": "main", "review": "direct",
               "forge": {"type": "gitea", "api": "https://git.example.com/api/v1", "repo": "org/gitops",
                         "token_env": "GITEA_TOKEN"}},
    "ingress": {"class": "nginx", "cluster_issuer": "letsencrypt"},
    "cluster": {"kubeconfig": "/etc/kube/config", "argocd_namespace": "argocd", "rollout_timeout": 300,
                "ingress": "http://127.0.0.1:17080"},
    "sealing": {"cert": "sealing-cert.pem"},
    "mirrors": {"pypi": "http://127.0.0.1:3141/root/pypi/+simple/", "debian": "http://deb.example/debian",
                "allow": ["https://files.example"]},
    "addons": {"mongodb": {"image": "127.0.0.1:5000/mongo:7"}},
    "runtimes": {"python": {"base_image": "127.0.0.1:5000/cupaas/python:3.13"}},
}
APP = {"repo": "https://git.example.com/tasks.git", "branch": "main", "replicas": 2,
       "env": {"LOG_LEVEL": "info", "WORKERS": 4}, "domains": ["tasks.example.org"],
       "processes": {"worker": 1}}
DOTCUPAAS = {"runtime": "python", "services": ["mongodb"], "run": "gunicorn app:app --bind 0.0.0.0:$PORT",
             "port": 8080, "healthcheck": "/healthz", "release": "python manage.py migrate",
             "cron": [{"name": "report", "schedule": "0 3 * * *", "command": "python report.py"}]}


def _control_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="cupaas-property-"))
    (root / "apps").mkdir()
    (root / "cupaas.yaml").write_text(yaml.safe_dump(PLATFORM))
    (root / "apps" / "tasks.yaml").write_text(yaml.safe_dump(APP))
    shutil.copy(TEST_KEY_DIR / "test-cert.pem", root / "sealing-cert.pem")
    return root


# Each check returns what happened ("loaded" or "refused"), which scripts/fuzz counts to show how far
# the inputs reach; any other exception escapes and fails the property.
LOADED, REFUSED = "loaded", "refused"


def check_platform(text: str) -> str:
    """cupaas.yaml, with apps/tasks.yaml valid: the whole control repo loads (certificate checked) or is refused."""
    root = _control_dir()
    try:
        (root / "cupaas.yaml").write_text(text, errors="surrogatepass")
        load_control_repo(root)
    except CupaasError:
        return REFUSED
    finally:
        shutil.rmtree(root)
    return LOADED


def check_app(text: str) -> str:
    """apps/tasks.yaml, with cupaas.yaml valid."""
    root = _control_dir()
    try:
        (root / "apps" / "tasks.yaml").write_text(text, errors="surrogatepass")
        load_control_repo(root, check_cert=False)
    except CupaasError:
        return REFUSED
    finally:
        shutil.rmtree(root)
    return LOADED


def check_dotcupaas(text: str) -> str:
    try:
        parse_app_config(text)
    except CupaasError:
        return REFUSED
    return LOADED


# --- lock files: TOML written from documents, so structure (not syntax) is what varies -----------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value) if value == value and abs(value) != float("inf") else ("nan" if value != value else
                                                                                  ("inf" if value > 0 else "-inf"))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    return json.dumps(str(value))


def toml_dumps(doc: Any) -> str:
    """TOML for a document (None values dropped): top-level tables as [sections], lists of tables as [[arrays]]."""
    if not isinstance(doc, dict):
        return f"x = {_toml_value(doc)}\n"
    lines: list[str] = []
    for key, value in doc.items():
        if value is None:
            continue
        name = json.dumps(str(key))
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines += [f"[[{name}]]", *(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in table.items()
                                           if v is not None)]
        elif isinstance(value, dict):
            lines += [f"[{name}]", *(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()
                                     if v is not None)]
        else:
            lines.insert(0, f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


UV_LOCK = {"version": 1, "package": [
    {"name": "tasks", "version": "0.1.0", "source": {"editable": "."},
     "dependencies": [{"name": "flask"}, {"name": "gunicorn", "marker": "sys_platform != 'win32'"},
                      {"name": "requests", "extra": ["socks"]}],
     "optional-dependencies": {"dev": [{"name": "pytest"}]}},
    {"name": "flask", "version": "3.0.0", "source": {"registry": "https://pypi.org/simple"},
     "dependencies": [{"name": "werkzeug", "version": "3.0.1"}]},
    {"name": "werkzeug", "version": "3.0.1", "source": {"registry": "https://pypi.org/simple"}},
    {"name": "gunicorn", "version": "22.0.0", "source": {"git": "https://github.com/benoitc/gunicorn?rev=x#abc"}},
    {"name": "requests", "version": "2.32.0", "source": {"url": "https://files.example/requests.whl"},
     "optional-dependencies": {"socks": [{"name": "pysocks"}]}},
    {"name": "pysocks", "version": "1.7.1", "source": {"registry": "https://pypi.org/simple"}},
]}
POETRY_LOCK = {"package": [
    {"name": "flask", "version": "3.0.0", "groups": ["main"], "markers": {"main": "python_version >= '3.8'"},
     "dependencies": {"werkzeug": ">=3", "click": [{"version": ">=8", "markers": "sys_platform == 'linux'"}]},
     "extras": {"async": ["asgiref (>=3.2)"]}},
    {"name": "werkzeug", "version": "3.0.1", "category": "main", "source": {"type": "git",
                                                                            "url": "https://x/w.git",
                                                                            "reference": "main"}},
    {"name": "pytest", "version": "8.0.0", "groups": ["dev"], "optional": False},
]}
POETRY_LOCK_OLD = {"package": [
    {"name": "flask", "version": "3.0.0", "dependencies": {"werkzeug": {"version": ">=3", "optional": True}}},
    {"name": "werkzeug", "version": "3.0.1", "source": {"type": "url", "url": "https://x/w.tar.gz"}},
]}
PYPROJECT = {"project": {"name": "tasks", "version": "1",
                         "dependencies": ["flask>=3", "gunicorn ; os_name == 'posix'"]},
             "tool": {"poetry": {"dependencies": {"python": "^3.11", "flask": {"version": "^3", "extras": ["async"]},
                                                  "werkzeug": [{"version": "3", "markers": "x"}]}}}}
REQUIREMENT_LINES = st.sampled_from([
    "flask", "Flask[async]==3.0", "gunicorn>=22 ; sys_platform != 'win32'", "-r more.txt", "-r ../outside.txt",
    "-c constraints.txt", "--requirement=sub/req.txt", "-r /etc/passwd", "-r \x00", "-e .", "-e ./lib", "./wheel.whl",
    "file:///tmp/x", "git+https://x/y.git@main#egg=y", "# comment", "--index-url http://x", "\\", "x \\", "-r",
    "-r more.txt", "pkg @ https://x/p.whl", "[", "é", "-r sub/../more.txt", "-r .", "-r sub",
])


@dataclass(frozen=True)
class LockInput:
    """The files of an app repo the reader sees: its own file and what it may read beside it."""

    reader: str
    files: dict[str, str]


def _requirements_files() -> st.SearchStrategy[dict[str, str]]:
    text = st.lists(st.one_of(REQUIREMENT_LINES, st.text(max_size=20)), max_size=8).map("\n".join)
    return st.fixed_dictionaries({"requirements.txt": text},
                                 optional={"more.txt": text, "constraints.txt": text, "sub/req.txt": text})


def _toml_files(name: str, base: dict[str, Any]) -> st.SearchStrategy[dict[str, str]]:
    text = st.one_of(mutated(base, keys=st.text(max_size=8)).map(toml_dumps),
                     documents(st.text(max_size=8)).map(toml_dumps),
                     st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("utf-8", "replace")))
    beside = mutated(PYPROJECT, st.text(max_size=8)).map(toml_dumps)
    extra = {} if name == "pyproject.toml" else {"pyproject.toml": beside}
    return st.fixed_dictionaries({name: text}, optional=extra)


PIPFILE_LOCK = {"_meta": {"requires": {"python_version": "3.13"}}, "default": {
    "flask": {"version": "==3.0.0", "hashes": ["sha256:" + "a" * 64], "markers": "python_version >= '3.8'"},
    "acme": {"git": "https://x/acme.git", "ref": "abc"}, "tasks": {"path": ".", "editable": True},
    "requests": {"version": "*", "extras": ["socks"]}}, "develop": {"pytest": {"version": "==8.0.0"}}}
FILE_OF = {"uv-lock": "uv.lock", "poetry-lock": "poetry.lock", "pep621": "pyproject.toml",
           "requirements": "requirements.txt", "copy": "requirements.txt", "pipfile-lock": "Pipfile.lock",
           "pipfile": "Pipfile"}
LOCK_INPUTS = st.one_of(
    _toml_files("uv.lock", UV_LOCK).map(lambda f: LockInput("uv-lock", f)),
    st.one_of(_toml_files("poetry.lock", POETRY_LOCK), _toml_files("poetry.lock", POETRY_LOCK_OLD)).map(
        lambda f: LockInput("poetry-lock", f)),
    _toml_files("pyproject.toml", PYPROJECT).map(lambda f: LockInput("pep621", f)),
    _requirements_files().map(lambda f: LockInput("requirements", f)),
    st.fixed_dictionaries({"Pipfile.lock": st.one_of(
        mutated(PIPFILE_LOCK, keys=st.text(max_size=8)).map(json.dumps), st.text(max_size=60))}).map(
        lambda f: LockInput("pipfile-lock", f)),
    st.fixed_dictionaries({"Pipfile": st.text(max_size=60)}).map(lambda f: LockInput("pipfile", f)),
)


def check_lockfile(given_input: LockInput) -> str:
    assert set(FILE_OF) == set(READERS), "a new reader needs a strategy here"
    root = Path(tempfile.mkdtemp(prefix="cupaas-property-"))
    try:
        for rel, text in given_input.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, errors="surrogatepass")
        found = _read_dependencies(given_input.reader, DirectorySource(root), FILE_OF[given_input.reader])
        assert found is None or isinstance(found, DependencySet)
        if found is not None:  # what the Dockerfile is rendered from: text only
            assert all(isinstance(p, str) for p in found.packages or ()), found
    except CupaasError:
        return REFUSED
    finally:
        shutil.rmtree(root)
    return LOADED


# --- webhooks: each forge's documented push, mutated, signed with the key the service would try ----------------

MASTER = b"cupaas-property-master-secret"
REGISTERED = {"tasks": "https://github.com/Acme/Tasks.git", "app": "https://git.example.com/org/app.git",
              "shop": "https://code.example.org/team/shop.git",
              "portal": "https://gitlab.example.com/platform/web/portal.git",
              "billing": "https://bitbucket.org/acme-team/billing"}
KEYRING = AppKeyring(MASTER, "https://git.example.com/org/control.git", lambda: REGISTERED)
WEBHOOK_FORGES = ("github", "gitea", "forgejo", "gitlab", "bitbucket")
HEADER_TRICKS = st.sampled_from([
    {}, {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain"},
    {"X-GitHub-Event": "ping"}, {"X-Gitea-Event": "delete"}, {"X-Gitlab-Event": "System Hook"},
    {"X-Event-Key": "repo:fork"}, {"X-GitHub-Delivery": "\x00"}, {"X-GitHub-Delivery": "x" * 300},
    {"X-Request-UUID": "é"}, {"Idempotency-Key": " "}, {"X-Hub-Signature-256": "sha256=zz"},
    {"X-Hub-Signature-256": "md5=00"}, {"X-Hub-Signature": "sha256=é"}, {"X-Gitlab-Token": "é\x00"},
    {"webhook-signature": "v1,AAAA", "webhook-id": "1", "webhook-timestamp": "99999999999999"},
    {"webhook-signature": "v1,AAAA"}, {"X-Forgejo-Signature": "00"}, {"X-Forgejo-Event": "push"},
])


@dataclass(frozen=True)
class Delivery:
    forge: str
    body: bytes
    sign: bool  # with the key the keyring offers for what the body claims (else the sent headers stand)
    key_index: int
    extra_headers: dict[str, str]


def _body(forge: str) -> st.SearchStrategy[bytes]:
    sample = json.loads(raw(BY_ID[forge]))
    as_json = st.one_of(mutated(sample, keys=st.text(max_size=8)), documents(st.text(max_size=8))).map(
        lambda d: json.dumps(d).encode())
    truncated = st.integers(0, len(raw(BY_ID[forge]))).map(lambda n: raw(BY_ID[forge])[:n])
    form = mutated(sample, keys=st.text(max_size=8)).map(
        lambda d: b"payload=" + json.dumps(d).encode().replace(b"%", b"%25").replace(b"&", b"%26"))
    return st.one_of(as_json, as_json, as_json, truncated, form, st.binary(max_size=100),
                     st.just(b"[" * 5000 + b"]" * 5000), st.just(b'{"a": ' * 3000 + b"1" + b"}" * 3000))


DELIVERIES = st.sampled_from(WEBHOOK_FORGES).flatmap(lambda forge: st.builds(
    Delivery, st.just(forge), _body(forge), st.sampled_from([True, True, True, False]), st.integers(0, 3),
    st.one_of(st.just({}), HEADER_TRICKS, st.dictionaries(st.sampled_from(
        ["Content-Type", "X-GitHub-Event", "X-Gitea-Event", "X-Gitlab-Event", "X-Event-Key", "X-Hub-Signature-256",
         "X-GitHub-Delivery", "X-Gitlab-Token"]), st.text(max_size=12), max_size=2))))


def check_webhook(delivery: Delivery) -> str:
    forge = BY_ID[delivery.forge]
    endpoint = "gitea" if delivery.forge == "forgejo" else delivery.forge
    headers = forge.headers(delivery.body, key=None) | delivery.extra_headers
    if delivery.sign:
        keys = KEYRING.keys_for(claimed_urls(endpoint, {k.lower(): v for k, v in headers.items()}, delivery.body))
        key = keys[delivery.key_index % len(keys)].secret
        headers = forge.headers(delivery.body, key=key) | delivery.extra_headers
    try:
        parsed = parse_webhook(endpoint, headers, delivery.body, KEYRING, now=1_750_000_000)
    except CupaasError:  # WebhookError: a 4xx with a message
        return REFUSED
    assert isinstance(parsed, Ignored) or (parsed and all(isinstance(e, PushEvent) for e in parsed)), parsed
    for event in parsed if isinstance(parsed, list) else []:
        assert event.repo_urls and all(isinstance(u, str) for u in event.repo_urls)
        assert len(event.commit) in (40, 64) and event.branch
    return "ignored" if isinstance(parsed, Ignored) else LOADED


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[Any], str]
    inputs: st.SearchStrategy[Any]


TARGETS = [
    Target("cupaas.yaml", check_platform, yaml_texts(PLATFORM)),
    Target("apps/<app>.yaml", check_app, yaml_texts(APP)),
    Target(".cupaas", check_dotcupaas, yaml_texts(DOTCUPAAS)),
    Target("lock files", check_lockfile, LOCK_INPUTS),
    Target("webhooks", check_webhook, DELIVERIES),
]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_any_input_loads_or_raises_a_cupaas_error(target: Target) -> None:
    @SUITE
    @given(target.inputs)
    def holds(value: Any) -> None:
        target.check(value)

    holds()


def test_the_properties_catch_a_foreign_exception() -> None:
    """The harness itself: a check that lets a KeyError through fails the property."""
    @settings(SUITE, phases=[Phase.generate])  # no shrinking: the failure is the point
    @given(yaml_texts(DOTCUPAAS))
    def broken(text: str) -> None:
        check_dotcupaas(text)
        raise KeyError(text)

    with pytest.raises(KeyError):
        broken()
