"""deposits.points_over_cap: a deposit recorded whole under the daily caps (fit_to_caps) keeps what they left
uncredited

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("deposits", sa.Column("points_over_cap", sa.Integer(), server_default="0", nullable=False))


def downgrade():
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.drop_column("points_over_cap")
