"""Per-app webhook secrets (issue 14 item 3): how an app's secret is derived, and `cupaas webhook-secret`.

Each app's secret is derived from the master secret ($CUPAAS_WEBHOOK_SECRET) and the app name; what the
service accepts with which secret is tested over HTTP in tests/test_webhook_http.py.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from deploy_support import publish_control_repo
from test_webhook_events import SECRET
from test_webhook_http import APPS

import webhook.cli  # noqa: F401 (adds `cupaas webhook-secret` to the CLI group)
from generator.cli import cli
from webhook.events import app_secret


def test_app_secret_is_hmac_of_the_app_name_under_the_master_secret() -> None:
    expected = hmac.new(SECRET, b"cupaas-webhook-app:tasks", hashlib.sha256).hexdigest().encode()
    assert app_secret(SECRET, "tasks") == expected
    assert app_secret(SECRET, "tasks") != app_secret(SECRET, "shop") != app_secret(b"other master", "shop")


# --- cupaas webhook-secret ------------------------------------------------------------------------------


@pytest.fixture
def control_dir(tmp_path: Path) -> Path:
    control = tmp_path / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(yaml.safe_dump({
        "domain": "apps.example.com", "registry": "127.0.0.1:5000/cupaas",
        "gitops": {"repo": (tmp_path / "gitops.git").as_uri(), "review": "direct"}}))
    (control / "apps" / "tasks.yaml").write_text(yaml.safe_dump({"repo": APPS["github"][1], "branch": "main"}))
    return control


def test_webhook_secret_command_prints_only_the_apps_derived_secret(control_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["webhook-secret", str(control_dir), "tasks"],
                                env={"CUPAAS_WEBHOOK_SECRET": SECRET.decode()})
    assert result.exit_code == 0, result.output
    assert result.stdout == app_secret(SECRET, "tasks").decode() + "\n"


def test_webhook_secret_command_takes_a_control_repo_url(tmp_path: Path, control_dir: Path) -> None:
    bare = publish_control_repo(tmp_path, control_dir)
    result = CliRunner().invoke(cli, ["webhook-secret", bare.as_uri(), "tasks"],
                                env={"CUPAAS_WEBHOOK_SECRET": SECRET.decode()})
    assert (result.exit_code, result.stdout) == (0, app_secret(SECRET, "tasks").decode() + "\n"), result.output


@pytest.mark.parametrize(("app_name", "env", "message"), [
    ("shop", {"CUPAAS_WEBHOOK_SECRET": SECRET.decode()}, "apps/shop.yaml: no such app is registered"),
    ("Not An App", {"CUPAAS_WEBHOOK_SECRET": SECRET.decode()}, "not a valid app name"),
    ("tasks", {"CUPAAS_WEBHOOK_SECRET": ""}, "set CUPAAS_WEBHOOK_SECRET"),
], ids=["unknown-app", "invalid-name", "no-master-secret"])
def test_webhook_secret_command_refuses_with_exit_1(control_dir: Path, app_name: str, env: dict[str, str],
                                                    message: str) -> None:
    result = CliRunner().invoke(cli, ["webhook-secret", str(control_dir), app_name], env=env)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and result.stdout == ""
    assert SECRET.decode() not in result.output and "Traceback" not in result.output


def test_webhook_secret_command_refuses_a_missing_control_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["webhook-secret", str(tmp_path / "nowhere"), "tasks"],
                                env={"CUPAAS_WEBHOOK_SECRET": SECRET.decode()})
    assert result.exit_code == 1 and "no such directory" in result.stderr, result.output
