"""deposits: a member code pays for one deposit (unique resident_id, member_code_nonce)

The unique index takes the place of ix_deposits_resident_id, whose lookups it serves. Deposits written before this
revision have no nonce (NULL), which the unique index lets stand. Built inside the migration's transaction, as 0003.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 17:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("member_code_nonce", sa.String(length=32), nullable=True))
        batch_op.create_index("uq_deposits_member_code", ["resident_id", "member_code_nonce"], unique=True)
        batch_op.drop_index(batch_op.f("ix_deposits_resident_id"))


def downgrade():
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deposits_resident_id"), ["resident_id"], unique=False)
        batch_op.drop_index("uq_deposits_member_code")
        batch_op.drop_column("member_code_nonce")
