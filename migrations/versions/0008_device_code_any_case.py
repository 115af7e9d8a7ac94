"""devices: a bin's code is unique whatever its case (HK-BIN-02 and hk-bin-02 are one bin)

Codes are painted on the bins and typed by admins; two that differ only in case would be two rows for one label.
An existing pair stops the upgrade with the codes, to be renamed by hand.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 04:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    clashes = (
        op.get_bind()
        .execute(sa.text("SELECT lower(code), count(*) FROM devices GROUP BY lower(code) HAVING count(*) > 1"))
        .all()
    )
    if clashes:
        codes = ", ".join(code for code, _ in clashes)
        raise RuntimeError(f"device codes that differ only in case: {codes}; rename all but one, then upgrade")
    op.create_index("uq_devices_code_lower", "devices", [sa.text("lower(code)")], unique=True)


def downgrade():
    op.drop_index("uq_devices_code_lower", table_name="devices")
