"""ledger_checks: each run of the ledger's verification is kept, for the admin site to show the latest

The nightly job's result, instead of reading the whole ledger inside a request.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 04:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ledger_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("accounts", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("first_bad_entry", sa.BigInteger(), nullable=True),
        sa.Column("problem_count", sa.Integer(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("notice_count", sa.Integer(), nullable=False),
        sa.Column("notices", sa.JSON(), nullable=False),
        sa.Column("run_by", sa.String(length=8), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_ledger_checks_staff_id_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_checks")),
    )
    op.create_index(op.f("ix_ledger_checks_finished_at"), "ledger_checks", ["finished_at"], unique=False)


def downgrade():
    op.drop_index(op.f("ix_ledger_checks_finished_at"), table_name="ledger_checks")
    op.drop_table("ledger_checks")
