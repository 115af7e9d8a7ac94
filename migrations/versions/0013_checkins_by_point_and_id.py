"""checkins: index (collection_point_id, id) in place of (collection_point_id)

A point's check-ins are listed newest first a page at a time (GET /collection-points/{id}/checkins, the admin site's
point page), as its deposits are (0003); the composite index answers a page without sorting all of the point's
check-ins, and serves every lookup the old one did. Built inside the migration's transaction, as 0003's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 19:50:00
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.create_index("ix_checkins_collection_point_id_id", ["collection_point_id", "id"], unique=False)
        batch_op.drop_index(batch_op.f("ix_checkins_collection_point_id"))


def downgrade():
    with op.batch_alter_table("checkins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkins_collection_point_id"), ["collection_point_id"], unique=False)
        batch_op.drop_index("ix_checkins_collection_point_id_id")
