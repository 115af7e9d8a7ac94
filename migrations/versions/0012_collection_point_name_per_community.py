"""collection_points: one name per community (residents and posters tell points apart by name)

An existing pair of points of one community with the same name stops the upgrade with the names, to be renamed by
hand: which point keeps the name is for its community to decide.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 14:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    clashes = (
        op.get_bind()
        .execute(sa.text("SELECT name FROM collection_points GROUP BY community_id, name HAVING count(*) > 1"))
        .scalars()
        .all()
    )
    if clashes:
        raise RuntimeError(f"collection points of one community with the same name: {', '.join(clashes)}; rename")
    # A plain index, which SQLite creates as it is: a batch would reflect communities, whose lower(code) index
    # reflection cannot read.
    op.create_index("uq_collection_points_community_name", "collection_points", ["community_id", "name"], unique=True)


def downgrade():
    op.drop_index("uq_collection_points_community_name", table_name="collection_points")
