"""GroupCommit with overlapping batches: nobody waits forever, whatever stop() meets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from ticketing.group_commit import GroupCommit


@dataclass
class Item:
    value: int
    future: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _fed(
    commit: Callable[[list[Item]], Awaitable[list[int]]], n: int, max_batch: int, overlap: bool
) -> tuple[GroupCommit[Item, int], list[Item]]:
    """A started GroupCommit with n items put."""
    gc: GroupCommit[Item, int] = GroupCommit(
        "t", commit, lambda b, r: None, max_batch=max_batch, may_overlap=lambda: overlap
    )
    gc.start()
    items = [Item(i) for i in range(n)]
    for it in items:
        gc.put(it)
    return gc, items


@pytest.mark.parametrize(("overlap", "at_most"), [(True, 2), (False, 1)])
async def test_batches_overlap_only_when_allowed_and_never_more_than_two(
    overlap: bool, at_most: int
) -> None:
    running = 0
    most = 0

    async def commit(batch: list[Item]) -> list[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.002)
        running -= 1
        return [i.value * 2 for i in batch]

    gc, items = _fed(commit, 30, max_batch=3, overlap=overlap)
    assert await asyncio.gather(*(it.future for it in items)) == [i * 2 for i in range(30)]
    assert most == at_most
    await gc.stop()


@pytest.mark.parametrize("stop_after_yields", [0, 1, 2, 3])
async def test_stop_at_any_moment_answers_every_item(stop_after_yields: int) -> None:
    """Including a batch whose task was created but has not run its first step yet."""
    gate = asyncio.Event()

    async def commit(batch: list[Item]) -> list[int]:
        await gate.wait()
        return [0 for _ in batch]

    gc, items = _fed(commit, 9, max_batch=2, overlap=True)
    for _ in range(stop_after_yields):
        await asyncio.sleep(0)
    await gc.stop()
    results = await asyncio.wait_for(
        asyncio.gather(*(it.future for it in items), return_exceptions=True), 2
    )
    assert all(isinstance(r, RuntimeError) and "shutting down" in str(r) for r in results)
