"""Fixtures for the whole suite. Keep this small: fixtures used by one test file live in that file."""

from __future__ import annotations

import os
from types import ModuleType

import k8s_validation
import pytest


@pytest.fixture(scope="session")
def k8s() -> ModuleType:
    """Strict manifest validation and `kubectl kustomize` (see tests/k8s_validation.py).

    ``k8s.validate_object(obj)``, ``k8s.validate_documents(text)``, ``k8s.kustomize_build(path)``,
    ``k8s.kustomize_build_many(paths)``; a plain ``import k8s_validation`` works as well.
    """
    return k8s_validation


DEV_ENV_HINT = (
    "These tests need dockerd, the local registry and the PyPI mirror: run them with scripts/test, or start "
    "them with `scripts/dev-env up` and export CUPAAS_TEST_REGISTRY, CUPAAS_TEST_PYTHON_BASE_IMAGE and "
    "CUPAAS_TEST_PYPI_MIRROR from its output (registry=..., python_base_image=..., pypi_mirror=...)."
)
CLUSTER_HINT = (
    "These tests need the local cluster: run them with scripts/test, or start it with `scripts/cluster up` "
    "and export CUPAAS_TEST_KUBECONFIG, CUPAAS_TEST_SEALING_CERT, CUPAAS_TEST_CLUSTER_KUBECTL, CUPAAS_TEST_INGRESS, "
    "CUPAAS_TEST_INGRESS_CLASS and CUPAAS_TEST_MONGODB_IMAGE from its output (kubeconfig=..., sealing_cert=..., "
    "kubectl=..., ingress=..., ingress_class=..., mongodb_image=...)."
)


def infra_setting(name: str, hint: str = DEV_ENV_HINT) -> str:
    """A setting scripts/test exports after starting the infrastructure; without it the test fails saying so."""
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set. {hint}", pytrace=False)
    return value


@pytest.fixture(scope="session")
def registry() -> str:
    """The local registry (host:port) started by scripts/dev-env."""
    return infra_setting("CUPAAS_TEST_REGISTRY")


@pytest.fixture(scope="session")
def base_image() -> str:
    """The local Python base image reference in that registry."""
    return infra_setting("CUPAAS_TEST_PYTHON_BASE_IMAGE")


@pytest.fixture(scope="session")
def pypi_mirror() -> str:
    """The PyPI mirror (devpi-server on loopback) that scripts/dev-env started: the only index builds reach."""
    return infra_setting("CUPAAS_TEST_PYPI_MIRROR")
