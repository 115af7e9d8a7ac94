"""staff.sessions_valid_after: a password change or a deactivation ends the sessions issued before it

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 17:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sessions_valid_after", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("sessions_valid_after")
