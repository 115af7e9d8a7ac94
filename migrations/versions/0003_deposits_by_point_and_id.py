"""deposits: index (collection_point_id, id) in place of (collection_point_id)

A point's deposits are listed newest first a page at a time (GET /collection-points/{id}/deposits); the composite
index answers a page without sorting all of the point's deposits, and serves every lookup the old one did.
The index is built inside the migration's transaction, so the revision applies whole or not at all; deposits being
written wait for the build (seconds for millions of rows).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 14:40:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index("ix_deposits_collection_point_id_id", ["collection_point_id", "id"], unique=False)
        batch_op.drop_index(batch_op.f("ix_deposits_collection_point_id"))


def downgrade():
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deposits_collection_point_id"), ["collection_point_id"], unique=False)
        batch_op.drop_index("ix_deposits_collection_point_id_id")
