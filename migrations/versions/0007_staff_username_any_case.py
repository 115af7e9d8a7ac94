"""staff: a username is unique whatever its case (Admin and admin are one name)

Staff log in with any case of their name. An existing pair of names that differ only in case stops the upgrade
with their ids, to be renamed by hand: which account keeps the name is for an admin to decide.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 02:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    clashes = (
        op.get_bind()
        .execute(sa.text("SELECT lower(username), count(*) FROM staff GROUP BY lower(username) HAVING count(*) > 1"))
        .all()
    )
    if clashes:
        names = ", ".join(name for name, _ in clashes)
        raise RuntimeError(f"staff usernames that differ only in case: {names}; rename all but one, then upgrade")
    op.create_index("uq_staff_username_lower", "staff", [sa.text("lower(username)")], unique=True)


def downgrade():
    op.drop_index("uq_staff_username_lower", table_name="staff")
