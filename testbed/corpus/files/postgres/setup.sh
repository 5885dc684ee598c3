#!/bin/sh
# Config layer: make sure the default cluster exists (postgresql-15's postinst
# normally creates it) and is owned by postgres.
set -e
[ -f /var/lib/postgresql/15/main/PG_VERSION ] || pg_createcluster 15 main
chown -R postgres:postgres /var/lib/postgresql /etc/postgresql
