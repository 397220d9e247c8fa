"""Properties of rendered trees: they build, validate strictly, are deterministic and keep secrets sealed."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from golden_support import golden_cases, prepare_control, read_tree, render_args, run_cli
from k8s_validation import kustomize_build, validate_documents
from sealing_support import test_private_key, unseal

CASES = golden_cases()
EXAMPLE_IMAGE = "127.0.0.1:5000/cupaas/tasks:" + "0" * 40 + "@sha256:" + "e" * 64
ROOT = Path(__file__).resolve().parent.parent


def _render_fresh(case: Path, tmp: Path) -> tuple[Path, Path]:
    control = prepare_control(case, tmp)
    out = tmp / "out"
    result = run_cli(render_args(case, control, out))
    assert result.exit_code == 0, result.output
    return control, out


def _overlays(out: Path) -> list[Path]:
    found = sorted(out.glob("apps/*/overlays/*"))
    assert found, f"no overlays under {out}"
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_overlays_build_and_every_object_validates_strictly(case: Path) -> None:
    for overlay in _overlays(case / "expected"):
        objects = validate_documents(kustomize_build(overlay))
        namespace = f"{overlay.parts[-3]}-{overlay.name}"
        assert objects
        assert {o["metadata"].get("namespace") for o in objects} == {namespace}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_applicationset_validates(case: Path) -> None:
    text = (case / "expected" / "argocd" / "applicationset.yaml").read_text()
    [appset] = validate_documents(text)
    assert appset["kind"] == "ApplicationSet"


def test_example_control_repo_renders_builds_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "gitops"
    result = run_cli(["render", str(ROOT / "examples/control"), "--out", str(out),
                      "--source", f"tasks={ROOT / 'examples/tasks-app'}", "--image", f"tasks={EXAMPLE_IMAGE}"])
    assert result.exit_code == 0, result.output
    kinds = sorted(o["kind"] for o in validate_documents(kustomize_build(out / "apps/tasks/overlays/production")))
    assert kinds == ["ConfigMap", "Deployment", "Ingress", "SealedSecret", "SealedSecret", "Service", "Service",
                     "ServiceAccount", "StatefulSet"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rendering_twice_gives_identical_bytes(case: Path, tmp_path: Path) -> None:
    control, out = _render_fresh(case, tmp_path)
    first = read_tree(out)
    again = run_cli(render_args(case, control, out))
    assert again.exit_code == 0
    assert "0 file(s) changed" in again.output
    assert read_tree(out) == first


def test_changing_one_app_changes_only_its_files(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "multi")
    control, out = _render_fresh(case, tmp_path)
    before = read_tree(out)
    blog = control / "apps" / "blog.yaml"
    data = yaml.safe_load(blog.read_text())
    data["env"]["NEW_SETTING"] = "on"
    data["replicas"] = 2
    blog.write_text(yaml.safe_dump(data))
    assert run_cli(["render", str(control), "--out", str(out)]).exit_code == 0
    after = read_tree(out)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed and all(p.startswith("apps/blog/overlays/") for p in changed), changed


def test_removing_an_app_removes_only_its_files(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "multi")
    control, out = _render_fresh(case, tmp_path)
    (out / "notes.txt").write_text("kept\n")
    before = read_tree(out)
    (control / "apps" / "api.yaml").unlink()
    result = run_cli(["render", str(control), "--out", str(out)])
    assert result.exit_code == 0 and "removed app api" in result.output
    after = read_tree(out)
    assert not (out / "apps" / "api").exists()
    assert {p for p in before if p not in after} == {p for p in before if p.startswith("apps/api/")}
    assert all(after[p] == before[p] for p in after)


def test_render_only_one_app_leaves_the_others(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "multi")
    control, out = _render_fresh(case, tmp_path)
    (out / "apps/api/overlays/staging/configmap.yaml").write_text("edited by hand\n")
    (control / "apps" / "shop.yaml").unlink()
    assert run_cli(["render", str(control), "--out", str(out), "--app", "blog"]).exit_code == 0
    assert (out / "apps/api/overlays/staging/configmap.yaml").read_text() == "edited by hand\n"
    assert (out / "apps/shop").is_dir()


def _sealed_secrets(out: Path) -> list[dict]:
    found = []
    for path in sorted(out.rglob("*.sealedsecret.yaml")):
        found.append(yaml.safe_load(path.read_text()))
    assert found
    return found


def _decrypt_all(out: Path) -> dict[tuple[str, str], str]:
    key = test_private_key()
    plain = {}
    for obj in _sealed_secrets(out):
        meta = obj["metadata"]
        for item, value in obj["spec"]["encryptedData"].items():
            plain[(meta["name"], item)] = unseal(key, value, meta["namespace"], meta["name"]).decode()
    return plain


def test_every_sealed_value_decrypts_with_its_namespace_and_name(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "full")
    _control, out = _render_fresh(case, tmp_path)
    plain = _decrypt_all(out)
    wanted = yaml.safe_load((case / "plaintexts.yaml").read_text())
    for key, value in wanted.items():
        assert plain[("tasks-secrets", key)] == value
    user = plain[("mongodb-auth", "MONGO_INITDB_ROOT_USERNAME")]
    password = plain[("mongodb-auth", "MONGO_INITDB_ROOT_PASSWORD")]
    assert user == "root" and len(password) == 32
    assert plain[("mongodb-auth", "MONGODB_URI")] == (
        f"mongodb://root:{quote(password, safe='')}@mongodb-0.mongodb.tasks-production.svc.cluster.local:27017/"
        "tasks?authSource=admin")


def test_no_plaintext_secret_or_password_anywhere_in_the_tree(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "full")
    _control, out = _render_fresh(case, tmp_path)
    secrets = [v for v in _decrypt_all(out).values() if v != "root"]
    assert len(secrets) == 4
    for path, text in read_tree(out).items():
        for secret in secrets:
            assert secret not in text, f"a secret value appears in clear text in {path}"


def test_addon_credentials_are_kept_on_later_renders(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "full")
    control, out = _render_fresh(case, tmp_path)
    first = (out / "apps/tasks/overlays/production/mongodb.sealedsecret.yaml").read_text()
    tasks = control / "apps" / "tasks.yaml"
    tasks.write_text(tasks.read_text().replace("LOG_LEVEL: info", "LOG_LEVEL: debug"))
    assert run_cli(render_args(case, control, out)).exit_code == 0
    assert (out / "apps/tasks/overlays/production/mongodb.sealedsecret.yaml").read_text() == first


def test_addon_credentials_are_new_for_a_new_environment(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "full")
    control, out = _render_fresh(case, tmp_path)
    platform = control / "cupaas.yaml"
    platform.write_text(platform.read_text().replace("environment: production", "environment: staging"))
    shutil.rmtree(control / "apps")  # the sealed app secrets are bound to the production namespace
    (control / "apps").mkdir()
    (control / "apps" / "tasks.yaml").write_text("repo: https://github.com/acme/tasks.git\nbranch: main\n")
    assert run_cli(render_args(case, control, out)).exit_code == 0
    staging = yaml.safe_load((out / "apps/tasks/overlays/staging/mongodb.sealedsecret.yaml").read_text())
    assert staging["metadata"]["namespace"] == "tasks-staging"
    plain = unseal(test_private_key(), staging["spec"]["encryptedData"]["MONGODB_URI"], "tasks-staging",
                   "mongodb-auth").decode()
    assert "tasks-staging.svc" in plain


def test_every_generated_file_has_the_header(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "full")
    _control, out = _render_fresh(case, tmp_path)
    for path, text in read_tree(out).items():
        if path.endswith(".yaml"):
            assert text.startswith("# Generated by cupaas; do not edit.\n"), path


def test_seal_command_output_decrypts_for_the_app_secret(tmp_path: Path) -> None:
    control = prepare_control(next(c for c in CASES if c.name == "full"), tmp_path)
    result = run_cli(["seal", str(control), "tasks", "API_TOKEN"], input="from-stdin\n")
    assert result.exit_code == 0, result.output
    sealed = result.output.strip().splitlines()[-1]
    assert unseal(test_private_key(), sealed, "tasks-production", "tasks-secrets") == b"from-stdin"
    assert "from-stdin" not in result.output
