"""deposit_corrections: a deposit recorded again with the right items, once

An admin corrects a mistyped weight or category: the deposit's credit is reversed and a new deposit takes its place,
in one transaction. The primary key on the corrected deposit makes it once only.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "deposit_corrections",
        sa.Column("deposit_id", BIG_ID, nullable=False),
        sa.Column("correction_id", BIG_ID, nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deposit_id"], ["deposits.id"], name=op.f("fk_deposit_corrections_deposit_id_deposits")
        ),
        sa.ForeignKeyConstraint(
            ["correction_id"], ["deposits.id"], name=op.f("fk_deposit_corrections_correction_id_deposits")
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_deposit_corrections_staff_id_staff")),
        sa.PrimaryKeyConstraint("deposit_id", name=op.f("pk_deposit_corrections")),
        sa.UniqueConstraint("correction_id", name=op.f("uq_deposit_corrections_correction_id")),
    )


def downgrade():
    op.drop_table("deposit_corrections")
