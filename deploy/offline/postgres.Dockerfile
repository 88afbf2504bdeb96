# PostgreSQL from Debian's packages, with the behaviour compose.yaml relies on from the
# official postgres image: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB create the role and
# the database on the first start (an empty /var/lib/postgresql/data), the server listens on
# every interface of the container with password (scram-sha-256) authentication over TCP, and
# `pg_isready` is on PATH for the healthcheck. Only the offline proof uses it
# (scripts/compose-proof.sh, compose.offline.yaml).
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
ARG PG_MAJOR=17
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-${PG_MAJOR} \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
# The user the Debian package created (its uid is not fixed).
# hadolint ignore=DL3066
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
