"""`cupaas images build`: the python runtime's base images, made from Debian packages, never pulled.

Each Python minor comes from the Debian release that ships it (bookworm: 3.11, trixie: 3.13), as the python
runtime's `versions.available` says.
`mmdebstrap` assembles a minimal root filesystem through the platform's Debian mirror with python3 and
a venv at /opt/venv first on PATH (Debian's pip refuses the system Python), plus the operator's extra
CA certificates; the engine imports it and pushes it to ``<registry>/cupaas/python:<minor>``. The image
carries a hash of its recipe, so a second run with nothing changed only checks the registry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..builder import push_image
from ..errors import TransientError, UserError
from ..models import ImageRef, Platform
from ..plugins import PluginRegistry
from .apt_sources import host_debian_mirror

RECIPE_LABEL = "org.cupaas.base-image.recipe"
RECIPE_VERSION = "1"
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
MMDEBSTRAP_TIMEOUT = 900

Log = Callable[[str], None]


@dataclass(frozen=True)
class Flavor:
    minor: str  # the Python minor version, "3.11"
    suite: str  # the Debian release that ships it


def _flavors() -> dict[str, Flavor]:
    """The python runtime's available versions (runtimes/python/runtime.yaml), each with its Debian release."""
    available = PluginRegistry().runtime("python").spec["versions"]["available"]
    return {minor: Flavor(minor, str(how["debian"])) for minor, how in available.items()}


FLAVORS = _flavors()


def image_name(platform: Platform, minor: str) -> str:
    """Where the base image of ``minor`` lives: the python runtime's default ``base_image``."""
    return f"{platform.registry}/cupaas/python:{minor}"


def flavors_for(minors: Sequence[str]) -> list[Flavor]:
    if not minors:
        return list(FLAVORS.values())
    unknown = [m for m in minors if m not in FLAVORS]
    if unknown:
        raise UserError(f"--python {unknown[0]}: no base image recipe for Python {unknown[0]}; "
                        f"available: {', '.join(FLAVORS)}")
    return [FLAVORS[m] for m in dict.fromkeys(minors)]


def debian_mirror(platform: Platform, etc_apt: Path = Path("/etc/apt")) -> str:
    mirror = platform.mirrors.debian or host_debian_mirror(etc_apt)
    if not mirror:
        raise UserError("cupaas.yaml: mirrors.debian: not set, and this machine's apt sources name no Debian "
                        "mirror; set mirrors.debian to your Debian mirror, such as http://deb.debian.org/debian")
    return mirror.rstrip("/")


def _certificates() -> list[Path]:
    return sorted(EXTRA_CA_DIR.glob("*.crt")) if EXTRA_CA_DIR.is_dir() else []


def _mmdebstrap_command(flavor: Flavor, mirror: str, certificates: Iterable[Path], target: Path) -> list[str]:
    # The hooks' "$1" is the root being built; mmdebstrap expands it, no shell here does.
    hooks = ['mkdir -p "$1/usr/local/share/ca-certificates"']
    # Operators behind a re-signing proxy or with a private CA need it inside the image, or pip fails to verify.
    hooks += [f"copy-in {crt} /usr/local/share/ca-certificates" for crt in certificates]
    hooks += ['chroot "$1" update-ca-certificates', 'chroot "$1" python3 -m venv /opt/venv']
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            *[f"--customize-hook={hook}" for hook in hooks],
            flavor.suite, str(target),
            f"deb {mirror} {flavor.suite} main", f"deb {mirror} {flavor.suite}-updates main"]


def _changes(recipe: str) -> list[str]:
    return [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", "ENV PYTHONUNBUFFERED=1", 'CMD ["python3"]',
            f"LABEL {RECIPE_LABEL}={recipe}"]


def recipe_of(flavor: Flavor, mirror: str, certificates: Sequence[Path]) -> str:
    """A hash of everything the image is made from: a change of any of it rebuilds the image."""
    command = _mmdebstrap_command(flavor, mirror, certificates, Path("ROOTFS"))
    text = json.dumps([RECIPE_VERSION, command, _changes(""), [c.read_bytes().hex() for c in certificates]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BaseImages:
    """Builds and pushes base images with one Docker engine (DOCKER_HOST or the local socket)."""

    def __init__(self, platform: Platform, log: Log, client: docker.DockerClient | None = None,
                 work_dir: str | None = None) -> None:
        self._platform = platform
        self._log = log
        try:
            self._client = client or docker.from_env()
        except docker.errors.DockerException as e:
            raise TransientError(f"Docker engine unreachable (DOCKER_HOST or the local socket): {e}") from e
        self._work_dir = work_dir or ("/dev/shm" if Path("/dev/shm").is_dir() else None)

    def build(self, minors: Sequence[str]) -> list[ImageRef]:
        flavors = flavors_for(minors)
        mirror = debian_mirror(self._platform)
        certificates = _certificates()
        return [self._one(flavor, mirror, certificates) for flavor in flavors]

    def _one(self, flavor: Flavor, mirror: str, certificates: Sequence[Path]) -> ImageRef:
        name = image_name(self._platform, flavor.minor)
        repository, _, tag = name.rpartition(":")
        recipe = recipe_of(flavor, mirror, certificates)
        started = time.monotonic()
        current = self._pushed_with(name, recipe)
        if current is not None:
            self._log(f"-----> {name} is up to date (Python {flavor.minor}, Debian {flavor.suite}; "
                      f"checked in {time.monotonic() - started:.1f}s)")
            return ImageRef(repository=repository, digest=current, tag=tag)
        if self._local_recipe(name) != recipe and not self._tag_local_copy(name, recipe):
            self._mmdebstrap(flavor, mirror, certificates, name, recipe)
        digest = self._push(repository, tag)
        self._log(f"       {name} done in {time.monotonic() - started:.1f}s")
        return ImageRef(repository=repository, digest=digest, tag=tag)

    def _local_recipe(self, name: str) -> str | None:
        try:
            labels = self._client.api.inspect_image(name)["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            raise TransientError(f"Docker engine: inspecting {name}: {e.explanation or e}") from e
        return labels.get(RECIPE_LABEL)

    def _tag_local_copy(self, name: str, recipe: str) -> bool:
        """Tag an image of the same recipe the engine already has (another platform's), if any."""
        try:
            found = self._client.api.images(filters={"label": f"{RECIPE_LABEL}={recipe}"})
        except docker.errors.APIError:
            return False
        if not found:
            return False
        repository, _, tag = name.rpartition(":")
        self._log(f"       same recipe as {', '.join(found[0].get('RepoTags') or [found[0]['Id']])}: tagging it")
        try:
            return bool(self._client.api.tag(found[0]["Id"], repository, tag))
        except docker.errors.APIError:
            return False

    def _pushed_with(self, name: str, recipe: str) -> str | None:
        """The registry digest of ``name`` if the registry holds the image of this recipe, else None."""
        try:
            remote = str(self._client.api.inspect_distribution(name)["Descriptor"]["digest"])
        except docker.errors.APIError:
            return None  # not in the registry (or it cannot be asked): build and push
        try:
            local = self._client.api.inspect_image(name)
        except docker.errors.ImageNotFound:
            try:
                self._client.api.pull(name)
                local = self._client.api.inspect_image(name)
            except docker.errors.APIError:
                return None
        repository = name.rpartition(":")[0]
        pushed = f"{repository}@{remote}" in (local.get("RepoDigests") or [])
        if pushed and (local["Config"].get("Labels") or {}).get(RECIPE_LABEL) == recipe:
            return remote
        return None

    def _mmdebstrap(self, flavor: Flavor, mirror: str, certificates: Sequence[Path], name: str,
                    recipe: str) -> None:
        if shutil.which("mmdebstrap") is None:
            raise UserError("mmdebstrap is not installed: apt-get install -y mmdebstrap (scripts/dev-env up does)")
        self._log(f"-----> Building {name} (Python {flavor.minor}, Debian {flavor.suite}) "
                  f"with mmdebstrap from {mirror}")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cupaas-base-", dir=self._work_dir) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            command = _mmdebstrap_command(flavor, mirror, certificates, rootfs)
            try:
                done = subprocess.run(command, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": tmp},
                                      capture_output=True, text=True, check=False, timeout=MMDEBSTRAP_TIMEOUT)
            except subprocess.TimeoutExpired as e:
                raise TransientError(f"mmdebstrap of {flavor.suite} took over {MMDEBSTRAP_TIMEOUT}s "
                                     f"(Debian mirror {mirror})") from e
            if done.returncode != 0:
                tail = "\n".join("       " + line for line in done.stderr.strip().splitlines()[-15:])
                raise TransientError(f"mmdebstrap of {flavor.suite} from the Debian mirror {mirror} "
                                     f"(cupaas.yaml mirrors.debian) failed:\n{tail}")
            size = rootfs.stat().st_size / 1e6
            self._log(f"       root filesystem in {time.monotonic() - started:.1f}s ({size:.0f} MB)")
            repository, _, tag = name.rpartition(":")
            try:
                with rootfs.open("rb") as data:
                    self._client.api.import_image_from_data(data, repository=repository, tag=tag,
                                                            changes=_changes(recipe))
            except docker.errors.APIError as e:
                raise TransientError(f"importing {name}: {e.explanation or e}") from e

    def _push(self, repository: str, tag: str) -> str:
        return push_image(self._client.api, repository, tag, self._log)
