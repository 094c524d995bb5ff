"""no JIT compilation in snapsync's database

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

PostgreSQL compiles a plan to machine code when its estimated cost passes `jit_above_cost`
(100,000 by default). The reporting views' plans pass it once the history is large, though they
read a few hundred rows by index: at the default size of benchmarks/reporting.py (5.8 M history
rows) "Creations and restores running for more than an hour" took 222 ms, of which 175 ms was
compiling (13.9 ms with `jit = off`), and the queries that read more paid up to 0.5 s with
inlining and optimization. Every query snapsync ships reads by index, so the compiled code never
earns its cost back.

`ALTER DATABASE ... SET jit = off` makes it the default of every new session in this database,
so Grafana, Metabase and psql get it without configuration (a role's or a session's own
setting still wins). snapsync's own connections also set it (app/db.py). Changing a database's
defaults needs its owner or a superuser: without that right the migration only warns, with the
statement an administrator can run. `CREATE DATABASE ... TEMPLATE` and a pg_dump without
`--create` do not carry the setting; docs/deploy.md says so.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _alter(action: str) -> str:
    return f"""
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I {action}', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'snapsync: role % may not change the defaults of database %; '
        'for fast reporting queries ask its owner to run: ALTER DATABASE % {action}',
        current_user, current_database(), quote_ident(current_database());
END
$$"""


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(_alter("SET jit = off"))


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(_alter("RESET jit"))
