#!/usr/bin/env bash
# The registry tests run on PostgreSQL as well as SQLite: make sure a server answers.
# LORALOOP_TEST_POSTGRES_URL names a server of your own; otherwise the local one on
# 127.0.0.1:5432 is used, started first if this machine has a cluster that is down.
set -euo pipefail

[ -n "${LORALOOP_TEST_POSTGRES_URL:-}" ] && exit 0

answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

answers && exit 0
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*/; do
        echo "starting PostgreSQL $(basename "$version") ..." >&2
        pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
    for _ in $(seq 30); do answers && exit 0; sleep 1; done
fi
cat >&2 <<'MESSAGE'
PostgreSQL does not answer on 127.0.0.1:5432. Start it (trust or password auth for user
postgres), or point the tests at a server of yours:
  LORALOOP_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB make test
MESSAGE
exit 1
