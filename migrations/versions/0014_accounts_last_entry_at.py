"""accounts.last_entry_at: a posting is never dated before the entry it follows, also when it waited for the lock

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("accounts", sa.Column("last_entry_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE accounts SET last_entry_at = (SELECT e.created_at FROM ledger_entries e "
        "WHERE e.account_id = accounts.id AND e.seq = accounts.last_seq) WHERE last_seq > 0"
    )


def downgrade():
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("last_entry_at")
