"""Random operation sequences against the ledger (SQLite in a temp file), checked
against a plain model and against the books' invariants after every step."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy.ext.asyncio import create_async_engine

from citizen_card.ledger import (
    Ed25519Signer,
    IdempotencyConflict,
    InsufficientFunds,
    Ledger,
    LedgerError,
    NotReversible,
    RefundExceedsOriginal,
    Transfer,
    verify_receipt,
)
from citizen_card.ledger_models import account_t, create_ledger_tables, entry_t, transfer_t

SIGNER = Ed25519Signer(key_id="stateful-1")
PEM = SIGNER.public_key_pem()
WALLETS = 3
MERCHANTS = 2
amounts = st.integers(min_value=1, max_value=3_000)


@dataclass
class Done:
    """A successful operation, kept to be retried later with the same key."""

    op: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any


@dataclass
class Model:
    balance: dict[int, int] = field(default_factory=dict)
    transfers: dict[uuid.UUID, Transfer] = field(default_factory=dict)
    refunded: dict[uuid.UUID, int] = field(default_factory=dict)
    reversed: set[uuid.UUID] = field(default_factory=set)
    disbursed: dict[tuple[str, int], int] = field(default_factory=dict)
    last_seq: int = 0

    def apply(self, t: Transfer) -> None:
        assert t.id not in self.transfers, "a new transfer was expected"
        assert t.seq > self.last_seq, "seq must increase strictly"
        self.last_seq = t.seq
        self.transfers[t.id] = t
        for p in t.postings:
            self.balance[p.account_id] = self.balance.get(p.account_id, 0) + p.amount


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = tempfile.mkdtemp(prefix="ledger-stateful-")
        self.engine = create_async_engine(f"sqlite+aiosqlite:///{self.tmp}/ledger.db")
        self.ledger = Ledger(self.engine, SIGNER, max_amount=10_000)
        self.model = Model()
        self.done: list[Done] = []
        self.keys = 0
        self.run(self._setup())

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    async def _setup(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(create_ledger_tables)
        self.wallets = [await self.ledger.open_account("wallet", f"w:{i}") for i in range(WALLETS)]
        self.merchants = [
            await self.ledger.open_account("merchant", f"m:{i}") for i in range(MERCHANTS)
        ]
        self.clearing = await self.ledger.system_account("topup_clearing")
        self.fund = await self.ledger.system_account("benefits_fund")

    def teardown(self) -> None:
        try:
            self.run(self.engine.dispose())
        finally:
            self.runner.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def bal(self, account: Any) -> int:
        return self.model.balance.get(account.id, 0)

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        result = self.run(getattr(self.ledger, op)(*args, **kwargs))
        self.done.append(Done(op, args, kwargs, result))
        return result

    def pick(self, seed: int, kinds: tuple[str, ...]) -> Transfer | None:
        options = [t for t in self.model.transfers.values() if t.kind in kinds]
        return options[seed % len(options)] if options else None

    # ------------------------------------------------------------------ operations

    @rule(w=st.integers(0, WALLETS - 1), amount=amounts)
    def top_up(self, w: int, amount: int) -> None:
        t = self.call("top_up", self.wallets[w], amount, self.key())
        assert not t.replayed
        self.model.apply(t)

    @rule(w=st.integers(0, WALLETS - 1), m=st.integers(0, MERCHANTS - 1), amount=amounts)
    def pay(self, w: int, m: int, amount: int) -> None:
        wallet, shop = self.wallets[w], self.merchants[m]
        key = self.key()
        if self.bal(wallet) >= amount:
            t = self.call("pay", wallet, shop, amount, key, partner_id=f"p{m}")
            self.model.apply(t)
        else:
            try:
                self.run(self.ledger.pay(wallet, shop, amount, key, partner_id=f"p{m}"))
            except InsufficientFunds:
                return
            raise AssertionError("a payment beyond the balance went through")

    @rule(seed=st.integers(0, 10_000), amount=amounts)
    def refund(self, seed: int, amount: int) -> None:
        pay = self.pick(seed, ("payment",))
        if pay is None:
            return
        shop = next(p.account_id for p in pay.postings if p.amount > 0)
        left = pay.amount - self.model.refunded.get(pay.id, 0)
        ok = (
            pay.id not in self.model.reversed
            and amount <= left
            and self.model.balance.get(shop, 0) >= amount
        )
        if ok:
            t = self.call("refund", pay.id, amount, self.key())
            self.model.apply(t)
            self.model.refunded[pay.id] = self.model.refunded.get(pay.id, 0) + amount
            assert t.original_transfer_id == pay.id and t.partner_id == pay.partner_id
        else:
            try:
                self.run(self.ledger.refund(pay.id, amount, self.key()))
            except (RefundExceedsOriginal, NotReversible, InsufficientFunds):
                return
            raise AssertionError("a refund that should fail went through")

    @rule(seed=st.integers(0, 10_000))
    def reverse(self, seed: int) -> None:
        orig = self.pick(seed, ("topup", "payment", "refund", "disbursement", "reversal"))
        if orig is None:
            return
        debits = {p.account_id: -p.amount for p in orig.postings if p.amount > 0}
        checked = [a for a in debits if a not in (self.clearing.id, self.fund.id)]
        ok = (
            orig.kind != "reversal"
            and orig.id not in self.model.reversed
            and self.model.refunded.get(orig.id, 0) == 0
            and all(self.model.balance.get(a, 0) + debits[a] >= 0 for a in checked)
        )
        if ok:
            t = self.call("reverse", orig.id, self.key())
            self.model.apply(t)
            self.model.reversed.add(orig.id)
            if orig.kind == "refund":
                assert orig.original_transfer_id is not None
                self.model.refunded[orig.original_transfer_id] -= orig.amount
        else:
            try:
                self.run(self.ledger.reverse(orig.id, self.key()))
            except (NotReversible, InsufficientFunds):
                return
            raise AssertionError("a reversal that should fail went through")

    @rule(
        batch=st.sampled_from(["b1", "b2", "b3"]),
        items=st.dictionaries(st.integers(0, WALLETS - 1), st.integers(1, 500), min_size=1),
    )
    def disburse(self, batch: str, items: dict[int, int]) -> None:
        plan = [(self.wallets[w], amount) for w, amount in items.items()]
        conflict = any(
            self.model.disbursed.get((batch, w.id), amount) != amount for w, amount in plan
        )
        if conflict:
            try:
                self.run(self.ledger.disburse(batch, plan))
            except IdempotencyConflict:
                return
            raise AssertionError("a batch paying a wallet a different amount went through")
        out = self.call("disburse", batch, plan)
        fresh = []
        for (w, amount), t in zip(plan, out, strict=True):
            if (batch, w.id) in self.model.disbursed:
                assert t.replayed and self.model.transfers[t.id] == t
            else:
                assert not t.replayed and t.amount == amount
                assert t.postings[-1].account_id == w.id
                fresh.append(t)
                self.model.disbursed[(batch, w.id)] = amount
        for t in sorted(fresh, key=lambda t: t.seq):  # written in wallet order, not input
            self.model.apply(t)

    @rule(seed=st.integers(0, 10_000))
    def retry(self, seed: int) -> None:
        """Resend an earlier successful request, same key and body: nothing changes."""
        if not self.done:
            return
        d = self.done[seed % len(self.done)]
        again = self.run(getattr(self.ledger, d.op)(*d.args, **d.kwargs))
        if d.op == "disburse":
            assert [t.id for t in again] == [t.id for t in d.result]
            assert all(t.replayed for t in again)
        else:
            assert again == d.result and again.replayed

    @rule(seed=st.integers(0, 10_000), extra=st.integers(1, 50))
    def reuse_key_for_another_request(self, seed: int, extra: int) -> None:
        ops = [d for d in self.done if d.op in ("top_up", "pay")]
        if not ops:
            return
        d = ops[seed % len(ops)]
        args = list(d.args)
        args[-2] = args[-2] + extra  # another amount, same key
        try:
            self.run(getattr(self.ledger, d.op)(*args, **d.kwargs))
        except IdempotencyConflict:
            return
        raise AssertionError("the same key with another body was accepted")

    @rule()
    def settle(self) -> None:
        self.run(self.ledger.settle())

    # ------------------------------------------------------------------ invariants

    @invariant()
    def books_balance(self) -> None:
        self.run(self._check_books())

    async def _check_books(self) -> None:
        async with self.engine.connect() as conn:
            per_transfer = (
                await conn.execute(
                    sa.select(entry_t.c.transfer_id, sa.func.sum(entry_t.c.amount)).group_by(
                        entry_t.c.transfer_id
                    )
                )
            ).all()
            per_account = dict(
                (
                    await conn.execute(
                        sa.select(entry_t.c.account_id, sa.func.sum(entry_t.c.amount)).group_by(
                            entry_t.c.account_id
                        )
                    )
                ).all()
            )
            seqs = list(
                (await conn.execute(sa.select(transfer_t.c.seq).order_by(transfer_t.c.seq)))
                .scalars()
                .all()
            )
            accounts = (await conn.execute(sa.select(account_t.c.id, account_t.c.kind))).all()
        # every transfer's entries sum to zero, and only the model's transfers exist
        assert all(total == 0 for _, total in per_transfer)
        assert {tid for tid, _ in per_transfer} == set(self.model.transfers)
        # seq: unique, and the model saw it increase with every new transfer
        assert len(seqs) == len(set(seqs)) == len(self.model.transfers)
        assert (seqs[-1] if seqs else 0) == self.model.last_seq
        assert await self.ledger.ledger_position() == self.model.last_seq
        for aid, kind in accounts:
            balance = await self.ledger.balance(aid)
            assert balance == int(per_account.get(aid, 0)) == self.model.balance.get(aid, 0)
            if kind in ("wallet", "merchant"):
                assert balance >= 0, (kind, aid, balance)

    @invariant()
    def receipts_verify(self) -> None:
        if self.model.transfers:
            last = max(self.model.transfers.values(), key=lambda t: t.seq)
            assert verify_receipt(last.receipt, PEM)["seq"] == last.seq


def test_ledger_state_machine() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_model_errors_are_ledger_errors() -> None:
    """The refusals the machine expects are all ``LedgerError``s (nothing written)."""
    for exc in (IdempotencyConflict, InsufficientFunds, NotReversible, RefundExceedsOriginal):
        assert issubclass(exc, LedgerError)
