"""checkins: where the resident stood is not kept

A scan's position only answers the point's geofence; nothing read it once stored (PIPL: collect what the purpose
needs). What was stored is dropped; a downgrade brings the columns back empty.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ALTER TABLE on SQLite too (3.35+): the columns are in no index or constraint, so no batch copy is needed.
    op.drop_column("checkins", "lng")
    op.drop_column("checkins", "lat")


def downgrade():
    op.add_column("checkins", sa.Column("lat", sa.Double(), nullable=True))
    op.add_column("checkins", sa.Column("lng", sa.Double(), nullable=True))
