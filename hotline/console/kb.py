"""Knowledge base: articles agents read out while talking, and n-gram search over them.

Chinese text has no word boundaries, so the index holds every CJK character and
every pair of adjacent CJK characters (unigrams and bigrams); Latin words and
numbers are indexed whole plus their prefixes, so "street" finds "streetlight".
A query is cut the same way; an article's rank is first how many of the query's
grams it contains (coverage), then whether the whole query appears verbatim in
the question or the answer, then where the grams sit (question beats answer).
The same SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from hotline.console.models import KbArticle, KbGram
from ticketing.store import Database

article_t = KbArticle.__table__  # type: ignore[attr-defined]
gram_t = KbGram.__table__  # type: ignore[attr-defined]

QUESTION_WEIGHT = 3
ANSWER_WEIGHT = 1
MAX_GRAM = 32
PREFIX_MIN, PREFIX_MAX = 3, 8
MAX_QUERY_GRAMS = 40
CANDIDATES = 200

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]+|[a-z0-9]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


class ArticleNotFound(Exception):
    pass


class StaleArticle(Exception):
    """The article changed since the editor loaded it."""


def normalize(text: str) -> str:
    """Full-width letters and digits to ASCII, lower case: ＡＢＣ１２ matches abc12."""
    return unicodedata.normalize("NFKC", text).lower()


def grams(text: str) -> set[str]:
    """The n-grams an article's text is indexed under."""
    out: set[str] = set()
    for run in _RUN.findall(normalize(text)):
        if _IS_CJK.match(run):
            out.update(run)
            out.update(run[i : i + 2] for i in range(len(run) - 1))
        else:
            out.add(run[:MAX_GRAM])
            out.update(run[:k] for k in range(PREFIX_MIN, min(len(run), PREFIX_MAX + 1)))
    return out


def query_grams(text: str) -> list[str]:
    """The grams a query looks for: bigrams for Chinese (a lone character by itself),
    whole words (at most the indexed prefix length) for the rest."""
    out: dict[str, None] = {}
    for run in _RUN.findall(normalize(text)):
        if _IS_CJK.match(run):
            if len(run) == 1:
                out[run] = None
            for i in range(len(run) - 1):
                out[run[i : i + 2]] = None
        elif len(run) >= PREFIX_MIN or run.isdigit() or len(_RUN.findall(text)) == 1:
            out[run[:PREFIX_MAX] if len(run) > PREFIX_MAX else run] = None
    return list(out)[:MAX_QUERY_GRAMS]


def index_rows(article_id: int, question: str, answer: str) -> list[dict[str, Any]]:
    q = grams(question)
    rows = {g: QUESTION_WEIGHT for g in q}
    for g in grams(answer) - q:
        rows[g] = ANSWER_WEIGHT
    return [{"gram": g, "article_id": article_id, "weight": w} for g, w in rows.items()]


@dataclass(frozen=True)
class ArticleFields:
    question: str
    answer: str
    category_code: str | None = None
    owner_department: str | None = None
    valid_from: date | None = None
    valid_to: date | None = None


def article_view(row: Any, today: date | None = None) -> dict[str, Any]:
    valid = row.status == "active" and (
        today is None
        or (
            (row.valid_from is None or row.valid_from <= today)
            and (row.valid_to is None or today <= row.valid_to)
        )
    )
    return {
        "id": row.id,
        "question": row.question,
        "answer": row.answer,
        "category": row.category_code,
        "owner_department": row.owner_department,
        "valid_from": row.valid_from.isoformat() if row.valid_from else None,
        "valid_to": row.valid_to.isoformat() if row.valid_to else None,
        "status": row.status,
        "in_force": valid,
        "created_by": row.created_by,
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat().replace("+00:00", "Z"),
        "version": row.version,
    }


async def create_article(db: Database, f: ArticleFields, who: str, now: datetime) -> int:
    async with db.write() as conn:
        res = await conn.execute(
            sa.insert(article_t)
            .values(
                question=f.question,
                answer=f.answer,
                category_code=f.category_code,
                owner_department=f.owner_department,
                valid_from=f.valid_from,
                valid_to=f.valid_to,
                status="active",
                created_by=who,
                updated_by=who,
                created_at=now,
                updated_at=now,
                version=1,
            )
            .returning(article_t.c.id)
        )
        article_id = int(res.scalar_one())
        await _reindex(conn, article_id, f.question, f.answer)
    return article_id


async def update_article(
    db: Database,
    article_id: int,
    changes: dict[str, Any],
    who: str,
    now: datetime,
    expected_version: int | None = None,
) -> None:
    """Apply `changes` (any ArticleFields field, or status); reindex when text changed."""
    async with db.write() as conn:
        row = (await conn.execute(sa.select(article_t).where(article_t.c.id == article_id))).first()
        if row is None:
            raise ArticleNotFound(article_id)
        if expected_version is not None and row.version != expected_version:
            raise StaleArticle(article_id)
        res = await conn.execute(
            sa.update(article_t)
            .where(article_t.c.id == article_id, article_t.c.version == row.version)
            .values(**changes, updated_by=who, updated_at=now, version=row.version + 1)
        )
        if res.rowcount != 1:
            raise StaleArticle(article_id)
        if "question" in changes or "answer" in changes:
            await _reindex(
                conn,
                article_id,
                changes.get("question", row.question),
                changes.get("answer", row.answer),
            )


async def _reindex(conn: Any, article_id: int, question: str, answer: str) -> None:
    await conn.execute(sa.delete(gram_t).where(gram_t.c.article_id == article_id))
    rows = index_rows(article_id, question, answer)
    for i in range(0, len(rows), 500):
        await conn.execute(sa.insert(gram_t), rows[i : i + 500])


async def get_article(db: Database, article_id: int) -> Any:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(article_t).where(article_t.c.id == article_id))).first()
    if row is None:
        raise ArticleNotFound(article_id)
    return row


async def search(
    db: Database,
    text: str,
    today: date,
    *,
    category: str | None = None,
    include_retired: bool = False,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """Articles in force today (all, for editors) best first; no query lists the newest."""
    wanted = query_grams(text)
    conds: list[Any] = []
    if not include_retired:
        conds += [
            article_t.c.status == "active",
            sa.or_(article_t.c.valid_from.is_(None), article_t.c.valid_from <= today),
            sa.or_(article_t.c.valid_to.is_(None), article_t.c.valid_to >= today),
        ]
    if category:
        conds.append(article_t.c.category_code == category)
    async with db.read() as conn:
        if not wanted:
            rows = await conn.execute(
                sa.select(article_t)
                .where(*conds)
                .order_by(article_t.c.updated_at.desc(), article_t.c.id.desc())
                .limit(limit)
            )
            return [article_view(r, today) for r in rows]
        hits = sa.func.count(gram_t.c.gram).label("hits")
        score = sa.func.sum(gram_t.c.weight).label("score")
        scored = (
            sa.select(gram_t.c.article_id, hits, score)
            .where(gram_t.c.gram.in_(wanted))
            .group_by(gram_t.c.article_id)
            .subquery()
        )
        rows = (
            await conn.execute(
                sa.select(article_t, scored.c.hits, scored.c.score)
                .join(scored, scored.c.article_id == article_t.c.id)
                .where(*conds)
                .order_by(scored.c.hits.desc(), scored.c.score.desc(), article_t.c.id.desc())
                .limit(CANDIDATES)
            )
        ).all()
    return rank(text, wanted, rows, today)[:limit]


def rank(text: str, wanted: list[str], rows: Iterable[Any], today: date) -> list[dict[str, Any]]:
    """Coverage first; a verbatim match of the whole query breaks ties, in the question
    before the answer; then the weight of the matched grams."""
    needle = "".join(_RUN.findall(normalize(text)))
    # spoken queries carry filler (了, 要, 我家): a quarter of a long query's pairs is a
    # real match, while one pair shared by chance with a long query is not
    floor = 1 if len(wanted) <= 3 else max(2, -(-len(wanted) // 4))
    scored = []
    for r in rows:
        if r.hits < floor:
            continue
        q = "".join(_RUN.findall(normalize(r.question)))
        a = "".join(_RUN.findall(normalize(r.answer)))
        verbatim = 2 if needle and needle in q else 1 if needle and needle in a else 0
        view = article_view(r, today)
        view["match"] = {"coverage": round(r.hits / len(wanted), 3), "verbatim": verbatim > 0}
        scored.append(((r.hits, verbatim, int(r.score), r.id), view))
    scored.sort(key=lambda s: s[0], reverse=True)
    return [v for _, v in scored]
