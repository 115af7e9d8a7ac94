"""device_signatures.refused: a replay says whether its first try was refused; checkins: index by day (the dashboard)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 07:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ALTERs, which SQLite runs as they are: a batch would reflect device_signatures and, through its foreign
    # key, devices, whose lower(code) index reflection cannot read.
    op.add_column("device_signatures", sa.Column("refused", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(op.f("ix_checkins_day"), "checkins", ["day"], unique=False)


def downgrade():
    op.drop_index(op.f("ix_checkins_day"), table_name="checkins")
    with op.batch_alter_table("device_signatures", schema=None) as batch_op:
        batch_op.drop_column("refused")
