"""console tables: the knowledge base and its n-gram index.

(Agents' states are the ACD's, in hotline/acd: the console keeps no copy.)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 00:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kb_article",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("question", sa.String(length=300), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("category_code", sa.String(length=64), nullable=True),
        sa.Column("owner_department", sa.String(length=64), nullable=True),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_kb_article_category_code"), "kb_article", ["category_code"])
    op.create_index(op.f("ix_kb_article_owner_department"), "kb_article", ["owner_department"])
    op.create_index(op.f("ix_kb_article_status"), "kb_article", ["status"])
    op.create_table(
        "kb_gram",
        sa.Column("gram", sa.String(length=32), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("gram", "article_id"),
    )
    op.create_index(op.f("ix_kb_gram_article_id"), "kb_gram", ["article_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_kb_gram_article_id"), table_name="kb_gram")
    op.drop_table("kb_gram")
    op.drop_index(op.f("ix_kb_article_status"), table_name="kb_article")
    op.drop_index(op.f("ix_kb_article_owner_department"), table_name="kb_article")
    op.drop_index(op.f("ix_kb_article_category_code"), table_name="kb_article")
    op.drop_table("kb_article")
