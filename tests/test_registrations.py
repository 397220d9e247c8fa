"""`apps/<app>.yaml` rewritten by a command keeps all it does not change (generator/commands/registrations.py)."""

from __future__ import annotations

import difflib

import pytest
import yaml

from generator.commands.registrations import dump

ANNOTATED = """\
# The shop. Owner: team-a (ask in #shop before changing)
repo: https://git.example/shop.git   # the storefront
branch: main
# Plain settings: the pods restart when they change
env:
  # log level for production
  LOG_LEVEL: info
  TZ: "America/Havana"  # quoted on purpose
secrets:
  API_KEY: AgBvery-long-ciphertext-{long}==
replicas: 2  # two for the sales
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.fixture
def text() -> str:
    return ANNOTATED.format(long="A" * 700)


def test_an_added_env_key_is_the_only_changed_line(text: str) -> None:
    raw = yaml.safe_load(text)
    raw["env"] = dict(sorted({**raw["env"], "PORT_NAME": "web"}.items()))
    after = dump(raw, text)
    assert changed_lines(text, after) == ["+  PORT_NAME: web"]
    assert yaml.safe_load(after) == raw


def test_changed_removed_and_new_keys_touch_only_their_lines(text: str) -> None:
    raw = yaml.safe_load(text)
    raw["replicas"] = 3
    del raw["env"]["LOG_LEVEL"]
    raw["auto_deploy"] = False
    after = dump(raw, text)
    assert yaml.safe_load(after) == raw
    assert changed_lines(text, after) == ["-  LOG_LEVEL: info", "-replicas: 2  # two for the sales",
                                          "+replicas: 3  # two for the sales", "+auto_deploy: false"]
    assert "# log level for production" in after  # a comment before a removed key stays
    assert after.startswith("# The shop. Owner: team-a")


def test_a_new_section_is_written_in_block_style(text: str) -> None:
    raw = yaml.safe_load(text)
    raw["processes"] = {"worker": 2}
    after = dump(raw, text)
    assert changed_lines(text, after) == ["+processes:", "+  worker: 2"]


@pytest.mark.parametrize("lists", ["hosts:\n- a.example\n", "hosts:\n  - a.example\n", "hosts:\n    - a.example\n"])
def test_the_files_own_indentation_is_kept(lists: str) -> None:
    text = "repo: https://git.example/x.git\nbranch: main\nenv:\n    A: '1'\n" + lists
    raw = yaml.safe_load(text)
    raw["env"]["B"] = "2"
    after = dump(raw, text)
    assert changed_lines(text, after) == ["+    B: '2'"]


def test_a_value_equal_as_data_is_not_rewritten() -> None:
    text = "repo: 'https://git.example/x.git'\nbranch: \"main\"\nenv:\n  N: '0100'\n"
    assert dump(yaml.safe_load(text), text) == text


def test_a_new_file_is_plain_yaml() -> None:
    assert dump({"repo": "https://git.example/x.git", "branch": "main"}) == (
        "repo: https://git.example/x.git\nbranch: main\n")


@pytest.mark.parametrize("value", ["yes", "on", "true", "null", "", "0100", "1e3", "a: b", "- x", "#x", "x #y"])
def test_new_text_values_read_back_as_the_same_text(text: str, value: str) -> None:
    raw = yaml.safe_load(text)
    raw["env"]["FLAG"] = value
    assert yaml.safe_load(dump(raw, text))["env"]["FLAG"] == value
