# cert-sidecar container image.
#
#   docker build -t cert-sidecar .                            # from PyPI, on python:3.12-slim-bookworm
#   docker build --build-arg BASE_IMAGE=<slim python image> .  # any Debian-like Python >= 3.11
#
# The default build context (this directory, filtered by .dockerignore) never holds wheels, so a
# checkout where anything built wheels still builds from the index. Offline builds use another
# context: a directory with this project's sources and a wheels/ folder of wheels built for the
# base image's Python; then the image installs from wheels/ only (no index). The compose tests
# assemble such a context (scripts/compose/build-images.sh) and point compose.yaml's
# CERT_SIDECAR_BUILD_CONTEXT at it.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The classic builder (docker-compose 1.29, DOCKER_BUILDKIT=0) keeps this stage as an untagged
# image of about 280 MB: the label lets the README's clean-up remove it, and nothing else.
LABEL cert-sidecar.stage=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
COPY . /src
# pip and setuptools are only needed to install; removing them keeps the runtime image smaller.
RUN python3 -m venv /opt/cert-sidecar \
    && if ls /src/wheels/*.whl >/dev/null 2>&1; then \
        /opt/cert-sidecar/bin/pip install --no-index --find-links /src/wheels cert-sidecar; \
    else \
        /opt/cert-sidecar/bin/pip install /src; \
    fi \
    && /opt/cert-sidecar/bin/python -m pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
# The runtime user. Its primary group is HAProxy's (gid 99 in the upstream haproxy image), so the
# PEM files it writes (0640) are readable by HAProxy and HAProxy's admin socket (660) is usable.
ARG UID=10001
ARG HAPROXY_GID=99
# Mount points of the volumes this image WRITES, owned by the runtime user: Docker copies a mount
# point's owner and mode into an empty named volume (podman: into a new one, when the first
# container using it starts), so the non-root process can write there. The setgid bit on the
# certs directory keeps new files in HAProxy's group. Nothing is made for volumes this image only
# reads (step-root-ca at /root_ca): a directory here would be copied over the writer's, and
# Docker lets the last container created win (docker/README.md, "Shared volumes"). None is
# under /run, a tmpfs in builds and containers (nothing made there stays in the image).
RUN (getent group "${HAPROXY_GID}" >/dev/null || groupadd --system --gid "${HAPROXY_GID}" haproxy) \
    && useradd --no-log-init --uid "${UID}" --gid "${HAPROXY_GID}" --no-create-home \
        --home-dir /var/lib/cert-sidecar --shell /usr/sbin/nologin cert-sidecar \
    && install -d -o "${UID}" -g "${HAPROXY_GID}" -m 2750 /etc/haproxy/certs \
    && install -d -o "${UID}" -g "${HAPROXY_GID}" -m 0750 /var/lib/cert-sidecar \
    && install -d -o "${UID}" -g "${HAPROXY_GID}" -m 2770 /var/lib/haproxy-run
COPY --from=build /opt/cert-sidecar /opt/cert-sidecar
ENV PATH=/opt/cert-sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ${UID}:${HAPROXY_GID}
WORKDIR /var/lib/cert-sidecar
# http-01 responder (:80) and tls-alpn-01 responder (:443) when enabled; health on 127.0.0.1:9102.
EXPOSE 80
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["cert-sidecar", "healthcheck"]
ENTRYPOINT ["cert-sidecar"]
CMD ["run"]
