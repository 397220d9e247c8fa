"""The boot check: start a freshly built image the way the cluster will, before it is pushed or committed.

A broken image (a SyntaxError, a server that is not installed, an app that exits at import) must never
become a release: on a cluster, a crash loop would be the first sign. The check runs the image's
command with the app's env (secret and add-on variables present with placeholder values) in a container
with no network at all, and watches it for a bounded time:

- the process exits: the check fails with the last lines of its output;
- it listens on $PORT (and answers the `.cupaas` healthcheck with a status below 500): it passes;
- it still runs but does not listen at the deadline: it passes with a warning (it may wait for its
  database, which it cannot reach here).

`boot_env` (pure) says what the container gets; `run_boot_check` is the I/O edge on the Docker engine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import docker
import docker.errors
import jinja2
import requests

from .errors import TransientError, UserError
from .models import AppConfig, AppRegistration
from .plugins import Plugin

DEFAULT_TIMEOUT = 10  # seconds; `.cupaas` boot_check: <seconds> changes it, false turns the check off
LOG_LINES = 30  # lines of the container's output quoted when it fails
PLACEHOLDER = "cupaas-boot-check-placeholder"
POLL_SECONDS = 0.1
CHECK_LABEL = "org.cupaas.boot-check"

Log = Callable[[str], None]

# Runs inside the container (its own loopback: the container has no other network), started once while
# the app boots: it polls the port until `wait` seconds are over and prints "closed", "open" (it listens
# but gives no HTTP answer in time) or "http <status>". A listening port alone proves little: a gunicorn
# master binds it before its workers import the app, and a worker that fails to import makes the master
# exit, dropping the queued request; so the probe asks for a page and waits for the answer. A server bound
# to 127.0.0.1 only answers here but not to the cluster: the kernel's socket table says so ("loopback").
_PROBE = """\
import socket, sys, time, urllib.error, urllib.request
port, path, deadline = int(sys.argv[1]), sys.argv[2] or "/", time.monotonic() + float(sys.argv[3])
def bound():
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = [row.split() for row in open(table).read().splitlines()[1:]]
        except OSError:
            continue
        found |= {r[1].rsplit(":", 1)[0] for r in rows if len(r) > 3 and r[3] == "0A" and r[1].endswith(f":{port:04X}")}
    loopback = {"0100007F", "00000000000000000000000001000000"}
    return " loopback" if found and found <= loopback else ""
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        answer = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=deadline - time.monotonic())
        print("http", answer.status, bound()); break
    except urllib.error.HTTPError as e:
        print("http", e.code, bound()); break
    except TimeoutError:
        print("open", bound()); break
    except (OSError, ValueError):
        time.sleep(0.05)
else:
    print("closed")
"""


@dataclass(frozen=True)
class BootSpec:
    """How to start the image for its boot check; `command` None runs the image's own CMD."""

    command: str | None
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    healthcheck: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def boot_spec(config: AppConfig, start_command: str | None, registration: AppRegistration,
              addons: Iterable[Plugin], namespace: str) -> BootSpec | None:
    """What the cluster would give the web container, with placeholders for secrets; None: check disabled."""
    if config.boot_check is False:
        return None
    timeout = DEFAULT_TIMEOUT if config.boot_check in (None, True) else int(config.boot_check)
    env = dict(registration.env)
    env.update({name: PLACEHOLDER for name in registration.secrets})
    for addon in addons:
        env.update(_addon_env(addon, registration.name, namespace))
    env["PORT"] = str(config.port)
    return BootSpec(command=start_command, port=config.port, env=dict(sorted(env.items())),
                    healthcheck=config.healthcheck, timeout=timeout)


def _addon_env(addon: Plugin, app: str, namespace: str) -> dict[str, str]:
    """The add-on's variables as the cluster sets them, its credentials replaced by placeholders: a URI
    stays a well-formed URI (naming a host the check cannot reach), so a client built at import works."""
    creds = addon.spec.get("credentials") or {}
    plain = {key: str(how.get("value", PLACEHOLDER)) for key, how in (creds.get("generate") or {}).items()}
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    environment.filters["urlquote"] = lambda value: quote(str(value), safe="")
    context = {**plain, "app": app, "namespace": namespace}
    for key, template in (creds.get("derive") or {}).items():
        try:
            plain[key] = environment.from_string(template).render(**context)
        except jinja2.TemplateError:
            plain[key] = PLACEHOLDER
    env = {}
    for name, ref in (addon.spec.get("env") or {}).items():
        key = ref.get("secret_key") if isinstance(ref, Mapping) else None
        env[name] = plain.get(str(key), PLACEHOLDER)
    return env


class BootFailed(UserError):
    """The image did not boot: its process exited during the check."""


def run_boot_check(api: docker.APIClient, image: str, spec: BootSpec, log: Log,
                   remove: Callable[[str], None] | None = None) -> None:
    """Start ``image`` (a local tag) per ``spec`` with no network; raise BootFailed if it exits.

    The container is removed at the end, by ``remove`` when given (in the background: the deploy goes on
    meanwhile), else here."""
    started = time.monotonic()
    shown = spec.command or "the image CMD"
    log(f"-----> Boot check: starting {image} ({shown}), up to {spec.timeout:g}s, no network")
    command = ["/bin/sh", "-c", f"exec {spec.command}"] if spec.command else None
    try:
        container = api.create_container(
            image, command=command, environment=dict(spec.env), labels={CHECK_LABEL: "1"},
            # As the rendered Deployment runs it (512Mi, allowPrivilegeEscalation: false), but with no network.
            host_config=api.create_host_config(
                network_mode="none", mem_limit="512m", pids_limit=512, security_opt=["no-new-privileges"]))
    except docker.errors.APIError as e:
        raise TransientError(f"boot check: the engine could not create a container of {image}: "
                             f"{e.explanation or e}") from e
    except requests.exceptions.RequestException as e:
        raise TransientError(f"boot check: lost the Docker engine: {e}") from e
    cid = container["Id"]
    try:
        api.start(cid)
        outcome = _watch(api, cid, spec, started)
        elapsed = time.monotonic() - started
        if outcome.exit_code is not None:
            tail = _tail(api, cid)
            output = "\n".join(f"       {line}" for line in tail) or "       (no output)"
            log(f" !     the process exited with code {outcome.exit_code} after {elapsed:.1f}s")
            raise BootFailed(
                f"the image does not boot: `{shown}` exited with code {outcome.exit_code} after {elapsed:.1f}s "
                f"(it must keep running and listen on 0.0.0.0:$PORT); nothing was pushed or committed.\n"
                f"last lines of its output:\n{output}")
        if outcome.ready:
            log(f"       boot check passed in {elapsed:.1f}s: {outcome.detail}")
            if outcome.loopback:
                log(" !     warning: it listens on 127.0.0.1 only, where the cluster cannot reach it: bind "
                    "0.0.0.0:$PORT (such as gunicorn --bind 0.0.0.0:$PORT)")
        else:
            log(f" !     warning: {outcome.detail} after {spec.timeout:g}s, but it is still running (it may be "
                f"waiting for a service it cannot reach here); boot check passed in {elapsed:.1f}s")
    except docker.errors.APIError as e:
        raise TransientError(f"boot check of {image}: {e.explanation or e}") from e
    except requests.exceptions.RequestException as e:
        raise TransientError(f"boot check: lost the Docker engine: {e}") from e
    finally:
        # A leftover (engine gone) carries CHECK_LABEL, so an operator can find it.
        if remove is not None:
            remove(cid)
        else:
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                api.remove_container(cid, force=True)


@dataclass(frozen=True)
class _Outcome:
    exit_code: int | None = None  # set: the process exited
    ready: bool = False
    detail: str = ""
    loopback: bool = False  # it listens on 127.0.0.1 (or ::1) only


def _watch(api: docker.APIClient, cid: str, spec: BootSpec, started: float) -> _Outcome:
    deadline = started + spec.timeout
    probe: Callable[[float], str | None] | None = _probe_python(api, cid, spec)
    last = f"not listening on port {spec.port}"
    path = spec.healthcheck or "/"
    while True:
        state = api.inspect_container(cid)["State"]
        if not state.get("Running"):
            return _Outcome(exit_code=int(state.get("ExitCode", -1)))
        if probe is not None:
            answer = probe(max(1.0, deadline - time.monotonic()))
            words = answer.split() if answer else []
            status = int(words[1]) if words[:1] == ["http"] else None
            loopback = "loopback" in words
            if answer is None:
                probe = _probe_proc(api, cid, spec.port)  # no python3 in the image: the kernel's socket table
            elif status is not None and (status < 500 or not spec.healthcheck):
                return _Outcome(ready=True, loopback=loopback,
                                detail=f"listening on port {spec.port}, {path} answered {status}")
            elif answer.startswith("open") and not spec.healthcheck:
                return _Outcome(ready=True, loopback=loopback,
                                detail=f"listening on port {spec.port} (no HTTP answer)")
            elif status is not None or answer.startswith("open"):
                last = f"listening on port {spec.port}, but {path} answered {status or 'nothing'}"
        if time.monotonic() >= deadline:
            if probe is None:
                last = "could not tell whether it listens (no python3 or cat in the image)"
            return _Outcome(detail=last)
        time.sleep(POLL_SECONDS)


def _exec(api: docker.APIClient, cid: str, command: list[str]) -> tuple[int | None, str]:
    try:
        created = api.exec_create(cid, command, stdout=True, stderr=False)
        output = api.exec_start(created["Id"])
        code = api.exec_inspect(created["Id"]).get("ExitCode")
    except docker.errors.APIError:
        return None, ""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
    return code, text


def _probe_python(api: docker.APIClient, cid: str, spec: BootSpec) -> Callable[[float], str | None]:
    def probe(wait: float) -> str | None:
        code, text = _exec(api, cid, ["python3", "-c", _PROBE, str(spec.port), spec.healthcheck or "",
                                      f"{wait:.1f}"])
        if code in (None, 126, 127) and not text:
            # Not started, or no python3 here. A process that exited meanwhile is seen by the next inspect.
            state = api.inspect_container(cid)["State"]
            return "closed" if not state.get("Running") else None
        return text.strip() or "closed"

    return probe


def _probe_proc(api: docker.APIClient, cid: str, port: int) -> Callable[[float], str | None] | None:
    """Listening sockets from /proc/net/tcp{,6} (state 0A), for images without python3."""
    code, _ = _exec(api, cid, ["cat", "/proc/net/tcp"])
    if code != 0:
        return None

    def probe(wait: float) -> str | None:
        _, text = _exec(api, cid, ["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                return "open"
        return "closed"

    return probe


def _tail(api: docker.APIClient, cid: str) -> list[str]:
    """The last lines of the output, stdout and stderr in the order they were written.

    The engine copies the two streams separately, so its log file may hold a last stderr line (the
    traceback) before earlier stdout lines: the lines are put back in order by the engine's timestamps
    (when it read them: lines written within the same instant may still swap).
    """
    raw: Any = api.logs(cid, stdout=True, stderr=True, timestamps=True, tail=LOG_LINES * 4)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    stamped = []
    for index, line in enumerate(text.splitlines()):
        stamp, _, rest = line.partition(" ")
        seconds, _, fraction = stamp.rstrip("Z").partition(".")
        if rest.strip():
            stamped.append(((seconds, fraction.ljust(9, "0"), index), rest.rstrip()))
    return [line for _, line in sorted(stamped)][-LOG_LINES:]
