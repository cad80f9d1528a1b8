# promtwist container images: the proxy and the agent, as upstream's
# pambrose/prometheus-proxy and pambrose/prometheus-agent are two images.
#
#   docker build --target proxy -t promtwist-proxy .    (the default target)
#   docker build --target agent -t promtwist-agent .
#
#   docker run --rm -p 8080:8080 -p 50051:50051 -p 8092:8092 \
#       -e ADMIN_ENABLED=true promtwist-proxy
#   docker run --rm -e AGENT_CONFIG=https://example.com/agent.conf \
#       -e PROXY_HOSTNAME=proxy.example.com:50051 promtwist-agent
#
# As upstream's, each image's entry point is its process, so arguments after
# the image name are its options (docker run promtwist-proxy --sd_enabled), and
# every setting can come from the environment variables upstream's images read
# (PROXY_CONFIG, AGENT_CONFIG, ADMIN_ENABLED, METRICS_ENABLED, PROXY_PORT,
# AGENT_PORT, PROXY_HOSTNAME, AGENT_NAME, AGENT_TOKEN, ...: the list is in
# `promtwist-proxy --help` and `promtwist-agent --help`, and in
# docs/deployment.md). JSON log lines: put --logger=promtwist.logs.jsonLogger
# first among the arguments.
#
# Both commands are installed in both images (docker run --entrypoint
# promtwist-agent promtwist-proxy ... works); the targets differ only in
# their entry point and EXPOSEd ports. Not built or run on the machine this was
# written on (no container runtime there): see docs/deployment.md.

ARG PYTHON_VERSION=3.11

# --- The wheel, built from this tree -----------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- What both images share ---------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
COPY --from=build /wheels /wheels
# Into a venv of its own, as docs/deployment.md installs it on a host. The
# plugin cache (twisted/plugins/dropin.cache) is built now, as root: the
# unprivileged user cannot write it later, and twistd promproxy-* uses it (the
# console scripts do not need it).
RUN python -m venv /opt/promtwist \
    && /opt/promtwist/bin/pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && /opt/promtwist/bin/python -c \
        "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot can check a number,
# not a name). Nothing is written at run time: the root file system may be
# read-only.
RUN groupadd --system --gid 10001 promtwist \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin promtwist
ENV PATH=/opt/promtwist/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# upstream's images run in /app, and their users mount a config file there
# and name it relatively (AGENT_CONFIG=prom-agent.conf); the compose file and
# the Kubernetes examples mount theirs in /etc/promtwist and name it
# absolutely, which works from any directory.
WORKDIR /app
USER 10001:10001

# --- The agent ----------------------------------------------------------------
FROM base AS agent
# Own metrics (agent.metrics.port) and admin (agent.admin.port): both off
# unless METRICS_ENABLED / ADMIN_ENABLED=true. The agent listens on nothing
# else: it dials the proxy.
EXPOSE 8083 8093
# Exec form: the process is PID 1 itself and gets SIGTERM/SIGHUP directly;
# it installs handlers for SIGTERM, SIGINT and SIGHUP, so no init (tini) is
# needed to stop it or reload it.
ENTRYPOINT ["promtwist-agent"]
CMD []

# --- The proxy (the default target: the last stage) ---------------------------
FROM base AS proxy
# Scrape port (Prometheus), agent port, own metrics, admin: upstream's ports,
# and 50440, the agent port of upstream's TLS and nginx examples, which its
# proxy image exposes as well.
EXPOSE 8080 50051 8082 8092 50440
ENTRYPOINT ["promtwist-proxy"]
CMD []
