"""checkins, deposits: index (resident_id, id)

A resident's own check-ins and deposits are listed newest first a page at a time (GET /me/checkins, /me/deposits),
as a point's are (0003, 0013). The unique indexes that lead with resident_id, (resident_id, collection_point_id, day)
and (resident_id, member_code_nonce), find the resident's rows but not in id order: PostgreSQL either reads and sorts
all of them, or walks the whole table's primary key backwards filtering on resident_id, which for a resident whose
last visit was months ago reads every row written since (about a second for a year-old visit at a year's volume).
This index answers a page from the resident's newest rows. Built inside the migration's transaction, as 0003's.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_checkins_resident_id_id", "checkins", ["resident_id", "id"], unique=False)
    op.create_index("ix_deposits_resident_id_id", "deposits", ["resident_id", "id"], unique=False)


def downgrade():
    op.drop_index("ix_deposits_resident_id_id", table_name="deposits")
    op.drop_index("ix_checkins_resident_id_id", table_name="checkins")
