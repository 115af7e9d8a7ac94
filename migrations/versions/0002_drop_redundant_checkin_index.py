"""checkins: drop ix_checkins_resident_id, which the unique (resident_id, collection_point_id, day) index covers

Every check-in wrote one index more than its lookups need.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:55:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkins_resident_id"))


def downgrade():
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkins_resident_id"), ["resident_id"], unique=False)
