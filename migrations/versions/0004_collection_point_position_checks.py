"""collection_points: a position is whole or absent, and a geofence has one (CHECK constraints)

Until now only the services held these rules, and a PATCH of one coordinate could store half a position, which
made ?near= and geofenced scans fail. Such rows lose the half position, which locates nothing. A point that had a
geofence on one is also retired, so that it does not quietly start accepting scans from anywhere: a worker gives
it a position again and brings it back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    broken = "(lat IS NULL) <> (lng IS NULL) OR (geofence_m IS NOT NULL AND lat IS NULL)"
    op.execute(sa.text(f"UPDATE collection_points SET active = false WHERE geofence_m IS NOT NULL AND ({broken})"))
    op.execute(sa.text(f"UPDATE collection_points SET lat = NULL, lng = NULL, geofence_m = NULL WHERE {broken}"))
    with op.batch_alter_table("collection_points", schema=None) as batch_op:
        batch_op.create_check_constraint("whole_position", "(lat IS NULL) = (lng IS NULL)")
        batch_op.create_check_constraint("geofence_has_position", "geofence_m IS NULL OR lat IS NOT NULL")


def downgrade():
    with op.batch_alter_table("collection_points", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_collection_points_geofence_has_position"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_collection_points_whole_position"), type_="check")
