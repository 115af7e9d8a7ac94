"""residents.sessions_valid_after: freezing a resident ends the sessions begun before it, also after a thaw

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 14:10:00
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("residents", sa.Column("sessions_valid_after", sa.DateTime(timezone=True), nullable=True))
    # Residents frozen already: their sessions so far end too, or a thaw after the upgrade would bring them back.
    op.execute(
        sa.text("UPDATE residents SET sessions_valid_after = :now WHERE status = 'frozen'").bindparams(
            sa.bindparam("now", datetime.now(UTC), type_=sa.DateTime(timezone=True))
        )
    )


def downgrade():
    with op.batch_alter_table("residents", schema=None) as batch_op:
        batch_op.drop_column("sessions_valid_after")
