"""process counts kept beside the rows: statement-level triggers on processes append grouped
deltas (process_count_deltas), a duty folds them into totals (process_counts); the process
summary reads both instead of grouping the whole processes table. Filled here for the
existing rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "pipeline_id, emitter_id, status, result_acked, pm_level, pm_status"


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("pipeline_id", sa.Uuid(), nullable=True),
        sa.Column("emitter_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result_acked", sa.Boolean(), nullable=False),
        sa.Column("pm_level", sa.String(length=16), nullable=True),
        sa.Column("pm_status", sa.String(length=16), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    ]


# One INSERT of grouped deltas per statement that changes processes (statement-level, with
# transition tables: a batch of 1,000 emissions is one delta row, not 1,000). An update
# counts only where a key column changed: -1 for the old key, +1 for the new, netted by key.
FUNCTIONS = {
    "process_counts_inserted": f"""
    INSERT INTO process_count_deltas ({KEY}, n)
    SELECT {KEY}, count(*) FROM inserted GROUP BY {KEY};""",
    "process_counts_updated": f"""
    INSERT INTO process_count_deltas ({KEY}, n)
    SELECT {KEY}, sum(n) FROM (
        SELECT {KEY}, 1 AS n FROM updated_new
        UNION ALL
        SELECT {KEY}, -1 AS n FROM updated_old
    ) AS changed
    GROUP BY {KEY} HAVING sum(n) <> 0;""",
    "process_counts_deleted": f"""
    INSERT INTO process_count_deltas ({KEY}, n)
    SELECT {KEY}, -count(*) FROM deleted GROUP BY {KEY};""",
    # TRUNCATE fires no DELETE trigger: the counts go with the rows.
    "process_counts_truncated": """
    DELETE FROM process_count_deltas;
    DELETE FROM process_counts;""",
}

TRIGGERS = {
    "processes_counted_insert": "AFTER INSERT ON processes REFERENCING NEW TABLE AS inserted "
    "FOR EACH STATEMENT EXECUTE FUNCTION process_counts_inserted()",
    "processes_counted_update": "AFTER UPDATE ON processes "
    "REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION process_counts_updated()",
    "processes_counted_delete": "AFTER DELETE ON processes REFERENCING OLD TABLE AS deleted "
    "FOR EACH STATEMENT EXECUTE FUNCTION process_counts_deleted()",
    "processes_counted_truncate": "AFTER TRUNCATE ON processes "
    "FOR EACH STATEMENT EXECUTE FUNCTION process_counts_truncated()",
}


def upgrade() -> None:
    op.create_table("process_counts", *_columns())
    op.create_table("process_count_deltas", *_columns())
    # No primary key (nothing looks a row up, and the hot paths' inserts skip an index):
    # with a logical-replication publication of all tables, deletes (the fold) still
    # replicate.
    op.execute("ALTER TABLE process_counts REPLICA IDENTITY FULL")
    op.execute("ALTER TABLE process_count_deltas REPLICA IDENTITY FULL")
    # Writers of processes wait from here to the commit: the counts filled below are those
    # of the rows as they are when the triggers start counting, nothing counted twice or
    # missed. (About a second per million processes.)
    op.execute("LOCK TABLE processes IN SHARE ROW EXCLUSIVE MODE")
    for name, body in FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN{body}"
            "\n    RETURN NULL;\nEND $$"
        )
    for name, definition in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(
        f"INSERT INTO process_counts ({KEY}, n) SELECT {KEY}, count(*) FROM processes "
        f"GROUP BY {KEY}"
    )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON processes")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("process_count_deltas")
    op.drop_table("process_counts")
