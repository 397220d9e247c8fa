"""The `cupaas` console script: the generator's commands plus `cupaas serve`.

The webhook layer sits above the generator (webhook → generator), so the command that runs the
service is added here rather than in generator/cli.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from generator import names
from generator.cli import cli, user_errors
from generator.errors import UserError

from .app import SECRET_ENV, check_config, master_secret
from .serve import serve as run


@cli.command()
@click.argument("control")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Job queue and git caches (default: $CUPAAS_STATE_DIR or ~/.cache/cupaas).")
@click.option("--control-branch", default="main", show_default=True, help="Branch of a control repo URL.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Job worker threads (with the SQLite queue; with Kafka, `cupaas worker` processes run jobs).")
@click.option("--queue", "queue_url", default="sqlite", show_default=True, envvar="CUPAAS_QUEUE",
              help="Job queue: sqlite (in the state dir, one machine) or kafka://HOST:PORT[,HOST:PORT...].")
@click.option("--insecure-no-signature", is_flag=True,
              help="Accept unsigned webhooks. Only on a network where nobody else can reach the service.")
@click.option("--stub-build", type=click.FloatRange(0, 3600), hidden=True,
              help="Build nothing: wait this many seconds and make up the image (benchmarks of the queue).")
@user_errors
def serve(control: str, host: str, port: int, state_dir: Path | None, control_branch: str, workers: int,
          queue_url: str, insecure_no_signature: bool, stub_build: float | None) -> None:
    """Run the webhook service for CONTROL (a control repo directory or git URL).

    The webhook secret comes from $CUPAAS_WEBHOOK_SECRET.
    """
    from .kafka_queue import check_queue

    config: dict[str, object] = {
        "CONTROL": control, "CONTROL_BRANCH": control_branch, "STATE_DIR": str(state_dir) if state_dir else None,
        "WORKER_THREADS": workers, "INSECURE_NO_SIGNATURE": insecure_no_signature, "QUEUE": queue_url}
    if stub_build is not None:
        from .kafka_stub import StubBuilder

        config["BUILDER"] = StubBuilder(stub_build)
    check_config(config)
    check_queue(queue_url)
    runs = f"{workers} job worker(s)" if queue_url == "sqlite" else f"jobs on {queue_url}, run by `cupaas worker`"
    click.echo(f"-----> cupaas serve: {control} on http://{host}:{port} ({runs})", err=True)
    run(config, host, port)


@cli.command()
@click.argument("control")
@click.option("--queue", "queue_url", default="sqlite", show_default=True, envvar="CUPAAS_QUEUE",
              help="Job queue: sqlite (the state dir of a `cupaas serve` on this machine) or "
                   "kafka://HOST:PORT[,HOST:PORT...].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Git caches, and the SQLite queue (default: $CUPAAS_STATE_DIR or ~/.cache/cupaas).")
@click.option("--control-branch", default="main", show_default=True, help="Branch of a control repo URL.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64), help="Jobs run at once.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve GET /metrics (Prometheus) and GET /healthz on this port (0: any free port).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address of --metrics-port (0.0.0.0 in a pod, for the probes and the scraper).")
@click.option("--stub-build", type=click.FloatRange(0, 3600), hidden=True,
              help="Build nothing: wait this many seconds and make up the image (tests and benchmarks).")
@user_errors
def worker(control: str, queue_url: str, state_dir: Path | None, control_branch: str, threads: int,
           metrics_port: int | None, metrics_host: str, stub_build: float | None) -> None:
    """Run deploy jobs of CONTROL (a control repo directory or git URL) from the queue, until SIGTERM.

    Start more processes on a Kafka queue to add builders; they share the work in one consumer group.
    """
    import logging

    from generator.deploy import default_state_dir

    from .kafka_queue import check_queue
    from .kafka_stub import StubBuilder
    from .kafka_worker import run_worker

    # Partition moves and lost jobs are worth a line in the worker's log (webhook.kafka_queue logs them).
    logging.basicConfig(level=logging.INFO, format="       %(name)s: %(message)s")
    check_queue(queue_url)
    run_worker(control, Path(state_dir or default_state_dir()), queue_url, threads=threads,
               control_branch=control_branch, builder=StubBuilder(stub_build) if stub_build is not None else None,
               echo=lambda line: click.echo(line, err=True),
               metrics_address=None if metrics_port is None else (metrics_host, metrics_port))


@cli.command(name="webhook-secret")
@click.argument("control")
@click.argument("app")
@click.option("--control-branch", default="main", show_default=True, help="Branch of a control repo URL.")
@user_errors
def webhook_secret(control: str, app: str, control_branch: str) -> None:
    """Print the webhook secret of APP, registered in CONTROL (a control repo directory or git URL).

    Configure it on the hook of APP's repository. It is derived from $CUPAAS_WEBHOOK_SECRET and the app
    name, so nothing is stored; the control repo's own hook uses $CUPAAS_WEBHOOK_SECRET itself.
    """
    import os
    import tempfile

    from generator.loading import load_control_repo

    from .control import ControlSource
    from .events import app_secret

    if not os.environ.get(SECRET_ENV):
        raise UserError(f"set {SECRET_ENV} to the master webhook secret of the service (what `cupaas serve` "
                        "runs with): app secrets are derived from it")
    master = master_secret({})
    assert master is not None
    if not names.is_app_name(app):
        raise UserError(f"app {app!r}: not a valid app name: {names.APP_NAME_RULE}")
    # A URL is exported into a directory of this command's own, never into the service's state dir.
    with tempfile.TemporaryDirectory(prefix="cupaas-webhook-secret-") as state:
        source = ControlSource(control, Path(state), control_branch)
        source.refresh()
        registered = load_control_repo(source.current(), check_cert=False)
        registered.app(app)
    click.echo(app_secret(master, app).decode("ascii"))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="cupaas")


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("cupaas-demo"),
              show_default=True, help="Everything the demo creates lives here; a second run reuses it.")
@click.option("--once", is_flag=True, help="Check the URL answers, print the result, stop everything, exit.")
@click.option("--registry", default="127.0.0.1:5000", show_default=True, help="The registry from scripts/dev-env.")
@click.option("--pypi-mirror", default="http://127.0.0.1:3141/root/pypi/+simple/", show_default=True,
              help="The PyPI mirror from scripts/dev-env: the only index the demo's builds reach.")
@click.option("--cluster", "on_cluster", is_flag=True,
              help="Deploy to the cluster of `scripts/cluster up` through Argo CD and answer through its ingress "
                   "(needs --kubeconfig, --sealing-cert, --ingress; scripts/quickstart --cluster passes them).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), help="With --cluster: its kubeconfig.")
@click.option("--sealing-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="With --cluster: the sealed-secrets controller's certificate.")
@click.option("--ingress", help="With --cluster: the ingress controller's entry point, http://HOST:PORT.")
@click.option("--ingress-class", default="traefik", show_default=True, help="With --cluster: its IngressClass.")
@click.option("--mongodb-image", help="With --cluster: the image of the MongoDB add-on (cupaas.yaml addons).")
@click.option("--cluster-kubectl", help="With --cluster: the kubectl to talk to it with (default: CUPAAS_KUBECTL).")
@user_errors
def demo(directory: Path, once: bool, registry: str, pypi_mirror: str, on_cluster: bool, kubeconfig: Path | None,
         sealing_cert: Path | None, ingress: str | None, ingress_class: str, mongodb_image: str | None,
         cluster_kubectl: str | None) -> None:
    """Run the whole loop locally: register, git push, build, commit to GitOps, and a URL to open."""
    import os
    import sys

    from .demo import ClusterTarget, run_demo

    kubectl = os.environ.get("CUPAAS_KUBECTL", "kubectl")
    cluster = None
    if on_cluster:
        missing = [flag for flag, value in (("--kubeconfig", kubeconfig), ("--sealing-cert", sealing_cert),
                                            ("--ingress", ingress)) if not value]
        if missing:
            raise click.UsageError(f"--cluster needs {', '.join(missing)} (the kubeconfig=, sealing_cert= and "
                                   "ingress= lines of `scripts/cluster up`)")
        assert kubeconfig and sealing_cert and ingress
        cluster = ClusterTarget(kubeconfig=kubeconfig.absolute(), sealing_cert=sealing_cert.absolute(),
                                ingress=ingress, ingress_class=ingress_class, mongodb_image=mongodb_image,
                                kubectl=cluster_kubectl or kubectl)
    elif kubeconfig or sealing_cert or ingress or mongodb_image:
        raise click.UsageError("--kubeconfig, --sealing-cert, --ingress and --mongodb-image go with --cluster")
    try:
        status = run_demo(directory, registry, pypi_mirror, once, echo=lambda line: click.echo(line),
                          kubectl=kubectl, cluster=cluster)
    except KeyboardInterrupt:  # run_demo has already stopped what it started
        click.echo("-----> Interrupted; everything the demo started is stopped", err=True)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
