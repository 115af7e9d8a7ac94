"""ledger_entry_reasons: an admin's reason kept beside the chain, which holds its salted digest

What an admin types when adjusting or reversing may name a person, and a resident who closes their account has their
personal data erased (PIPL); a hashed field cannot be. Entries written before this keep their memo as it was.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.add_column("ledger_entries", sa.Column("reason_digest", sa.String(length=64), nullable=True))
    op.create_table(
        "ledger_entry_reasons",
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=True),
        sa.Column("text", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name=op.f("fk_ledger_entry_reasons_entry_id_ledger_entries")
        ),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_ledger_entry_reasons")),
    )


def downgrade():
    # The digest is part of those entries' hashes: dropping it would break their chains for good.
    kept = op.get_bind().execute(sa.text("SELECT count(*) FROM ledger_entries WHERE reason_digest IS NOT NULL"))
    if kept.scalar():
        raise RuntimeError("entries hash their reasons' digests; downgrading past 0019 would break their chains")
    op.drop_table("ledger_entry_reasons")
    op.drop_column("ledger_entries", "reason_digest")
