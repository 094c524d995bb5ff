#!/bin/sh
# Run by the postgres image on the first start of an empty volume (docker-entrypoint-initdb.d).
# Creates snapsync's read-only role (`snapsync migrate` grants it SELECT on every table and view)
# and Grafana's login as a member of it. On an existing volume, run the same SQL by hand; see
# docs/deploy.md.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v grafana_password="${SNAPSYNC_GRAFANA_DB_PASSWORD:-grafana}" <<'SQL'
CREATE ROLE snapsync_reader NOLOGIN;
CREATE ROLE snapsync_grafana LOGIN PASSWORD :'grafana_password' IN ROLE snapsync_reader;
SQL
