"""communities: a code is unique whatever its case (HengKang and hengkang are one community), as usernames and bin
codes are

An existing pair of codes that differ only in case stops the upgrade with the codes, to be renamed by hand.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 14:25:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    clashes = (
        op.get_bind()
        .execute(sa.text("SELECT lower(code) FROM communities GROUP BY lower(code) HAVING count(*) > 1"))
        .scalars()
        .all()
    )
    if clashes:
        raise RuntimeError(f"community codes that differ only in case: {', '.join(clashes)}; rename, then upgrade")
    op.create_index("uq_communities_code_lower", "communities", [sa.text("lower(code)")], unique=True)


def downgrade():
    op.drop_index("uq_communities_code_lower", table_name="communities")
