"""Tables of the console: the knowledge base and its search index.

The search index is a plain table of character n-grams (`kb_gram`) rather than a
full-text engine: Chinese has no spaces, SQLite's FTS5 tokenizers and PostgreSQL's
text search parsers both split on them, while an n-gram table behaves the same on
both stores and finds 路灯 inside 路灯不亮.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ticketing.models import UTCDateTime, utcnow


class KbArticle(SQLModel, table=True):
    """One question and its approved answer; retired articles stay for the record."""

    __tablename__ = "kb_article"
    id: int | None = Field(default=None, primary_key=True)
    question: str = Field(max_length=300)
    answer: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    category_code: str | None = Field(default=None, max_length=64, index=True)
    owner_department: str | None = Field(default=None, max_length=64, index=True)
    valid_from: date | None = None
    valid_to: date | None = None
    status: str = Field(default="active", max_length=16, index=True)  # active | retired
    created_by: str = Field(max_length=64)
    updated_by: str = Field(max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    version: int = Field(default=1)


class KbGram(SQLModel, table=True):
    """Inverted index: which article contains which n-gram, and how prominently."""

    __tablename__ = "kb_gram"
    gram: str = Field(primary_key=True, max_length=32)
    article_id: int = Field(primary_key=True, index=True)
    weight: int  # 3 when the gram is in the question, 1 when only in the answer
