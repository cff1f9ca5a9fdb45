# spangate's container image (docs/image.md).
#
#   docker build -t spangate .     anywhere with network (BuildKit, classic, Podman): wheels from PyPI
#   make image                     here, with buildah: wheels downloaded on the host beforehand
#
# Every Python package is installed from requirements.lock with --require-hashes, and only from a
# local wheelhouse (--no-index). A pip inside a build step cannot always reach the package index
# (our build machines cannot), so the wheelhouse comes from one of two places:
#   - dev/image/wheelhouse/ in the build context, when it holds wheels: dev/image/build.sh (make
#     image) fills it on the host with `pip download --require-hashes --no-deps` from the locks;
#   - otherwise (the folder is in the repository, empty but for its .gitignore) the builder
#     downloads them from PyPI here, with the same command.
# Either way every wheel is checked against the lock's hashes when it is installed.
#
# The runtime stage holds the virtual environment (/opt/spangate) and nothing else of the build:
# no compiler, no pip (nor the base interpreter's, nor a wheel to install one from), no pip cache,
# no dev tools (requirements-dev.lock is never installed), no setuid or setgid file.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock requirements-build.lock /src/
COPY dev/image/wheelhouse/ /wheelhouse/
# The wheelhouse (binary wheels only: nothing is compiled in the build); then /opt/build, pip
# and the build backend (requirements-build.lock) to build and install with; then
# /opt/spangate, the runtime environment, made without pip, holding exactly requirements.lock.
RUN if [ -z "$(find /wheelhouse -name '*.whl' -print -quit)" ]; then \
      python3 -m venv /tmp/pip \
      && /tmp/pip/bin/pip download --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
           -r /src/requirements.lock -r /src/requirements-build.lock -d /wheelhouse \
      && rm -rf /tmp/pip; \
    fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
      --only-binary=:all: --require-hashes -r /src/requirements-build.lock \
 && python3 -m venv --without-pip /opt/spangate \
 && /opt/build/bin/pip --python /opt/spangate/bin/python install --no-cache-dir --no-index \
      --find-links /wheelhouse --only-binary=:all: --require-hashes -r /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
# The package itself: a wheel built from the source (no build isolation: the backend comes from
# the lock), installed without dependencies (all in the lock), then checked for consistency.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-index --no-deps --no-build-isolation -w /dist /src \
 && /opt/build/bin/pip --python /opt/spangate/bin/python install --no-cache-dir --no-index \
      --no-deps /dist/*.whl \
 && /opt/build/bin/pip --python /opt/spangate/bin/python check

FROM ${BASE_IMAGE} AS runtime
# VERSION is pyproject.toml's (a test keeps them equal); dev/image/build.sh passes REVISION (the
# git commit). SOURCE_URL is pyproject.toml's [project.urls] Source (a test keeps them equal):
# the build fails rather than label the image with anything but an https URL.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://github.com/spangate/spangate
LABEL org.opencontainers.image.title="spangate" \
      org.opencontainers.image.description="Identity-aware gateway in front of Google Cloud Spanner: OIDC/Okta tokens, YAML RBAC policies, whitelisted parameterised statements, audited." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# - No installer in the image: the base interpreter's pip, setuptools and wheel (python:*-slim
#   has them) and the wheels ensurepip and venv would install (Debian's python3-venv keeps them
#   in /usr/share/python-wheels). The gateway's environment never had pip.
# - A fixed non-root user 10001 whose group is 10001; the audit directory is owned by 10001 and
#   group 0 with the group's rights (platforms that run an arbitrary uid in group 0, OpenShift);
#   the policy's folder.
# - No setuid or setgid file: nothing in the container can gain privileges by running one.
RUN case "$SOURCE_URL" in https://?*) ;; *) echo "SOURCE_URL must be an https URL" >&2; exit 1 ;; esac \
 && (python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel 2>/dev/null || true) \
 && rm -rf "$(python3 -c 'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))')/_bundled" \
      /usr/share/python-wheels \
 && groupadd --gid 10001 spangate \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin spangate \
 && install -d -o 10001 -g 0 -m 0770 /var/lib/spangate \
 && install -d -m 0755 /etc/spangate \
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
COPY --from=builder /opt/spangate /opt/spangate
# Settings (docs/image.md): listen on every interface inside the container, the policy in
# /etc/spangate (a mounted ConfigMap in Kubernetes), the audit file in the writable volume.
# The .pyc files were written at install time: nothing needs to write under the read-only root.
ENV PATH=/opt/spangate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPANGATE_HOST=0.0.0.0 \
    SPANGATE_PORT=8080 \
    SPANGATE_POLICY=/etc/spangate/policy.yaml \
    SPANGATE_AUDIT_PATH=/var/lib/spangate/audit.jsonl
# With a read-only root filesystem only these are written: the audit trail and temporary files.
VOLUME ["/tmp", "/var/lib/spangate"]
WORKDIR /var/lib/spangate
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: Kubernetes ignores it and probes /healthz (liveness) and /readyz (readiness)
# itself (the Helm chart); a HEALTHCHECK would also need curl or a Python one-liner in the image.
ENTRYPOINT ["spangate"]
CMD ["serve"]
