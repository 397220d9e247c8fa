# The cupaas image: `cupaas serve` (forge webhooks + build workers) as a non-root user.
#
#   cupaas images build CONTROL_DIR --python 3.13     # makes <registry>/cupaas/python:3.13 from Debian packages
#   docker build --build-arg BASE_IMAGE=<registry>/cupaas/python:3.13 \
#       --build-arg PIP_INDEX_URL=https://pypi.mirror.example/simple/ -t <registry>/cupaas/cupaas:0.1.0 .
#
# BASE_IMAGE: a Debian-based image whose `python3` is 3.11.4 or newer and has the venv module (the
# 3.13 image `cupaas images build` makes, or Debian 13's python3 + python3-venv). Both stages use it, so
# the virtualenv copied from the first stage runs on the same interpreter. PIP_INDEX_URL: the PyPI mirror
# to install from (default: pip's own). Nothing here needs Docker Hub. Only the Dockerfile syntax of the
# classic builder is used: it builds with or without BuildKit.
ARG BASE_IMAGE=127.0.0.1:5000/cupaas/python:3.13

# --- build: install cupaas and its dependencies into a virtualenv ----------------------------------------
FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
WORKDIR /src
# The whole context (.dockerignore leaves out what the package does not need): pyproject.toml decides
# what the wheel takes from it.
COPY . .
RUN python3 -m venv /opt/cupaas \
    && /opt/cupaas/bin/pip install --no-cache-dir --disable-pip-version-check .

# --- runtime: the virtualenv, git and ssh for the repos, tini as PID 1 ------------------------------------
FROM ${BASE_IMAGE}
# git: GitPython drives the git CLI; openssh-client: git over SSH; tini: forwards signals to cupaas and
# reaps the git and ssh processes it starts.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git openssh-client tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 cupaas \
    && useradd --uid 10001 --gid 10001 --home-dir /home/cupaas --create-home --shell /usr/sbin/nologin cupaas \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/cupaas
COPY --from=build /opt/cupaas /opt/cupaas
ENV PATH=/opt/cupaas/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CUPAAS_STATE_DIR=/var/lib/cupaas \
    CUPAAS_HOST=0.0.0.0 \
    CUPAAS_PORT=8080
USER 10001:10001
# Fails the build when the installed cupaas cannot start in this image.
RUN cupaas --version
WORKDIR /var/lib/cupaas
EXPOSE 8080
ENTRYPOINT ["tini", "--"]
# CUPAAS_CONTROL_REPO (a git URL or a directory) and CUPAAS_WEBHOOK_SECRET must be set; the Helm chart
# sets both, and passes the same arguments itself.
CMD ["sh", "-c", "exec cupaas serve \"${CUPAAS_CONTROL_REPO:?set CUPAAS_CONTROL_REPO to the control repo URL or directory}\" --host \"$CUPAAS_HOST\" --port \"$CUPAAS_PORT\""]
