"""The batcher's queue: requests by priority class and tenant, served highest class first and round robin
between a class's tenants; under pressure it names whom to shed (lowest class, largest tenant, newest first).

One in every `1 / lower_share` batches is led by the lower class that waited longest, so no class starves.
With one class and no tenants it is a plain FIFO queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from contract.tensors import Arrays
from gateway.types import Timing


@dataclass(slots=True, eq=False)
class Item:
    inputs: Arrays
    rows: int
    key: tuple[object, ...]  # requests merge only when every input agrees on dtype and trailing shape
    future: asyncio.Future[Arrays]
    deadline: float | None
    enqueued_at: float = 0.0
    timing: Timing | None = None
    level: int = 0  # priority class, 0 = highest
    tenant: str = ""
    gone: bool = False  # taken, dropped or shed; removed from its deque lazily


class ClassQueue:
    def __init__(self, levels: int = 1, lower_share: float = 0.0, fair: bool = True) -> None:
        self.levels = max(1, levels)
        self.fair = fair  # False: one queue per class in arrival order, whatever the tenant
        self._lead_every = round(1 / lower_share) if lower_share > 0 else 0
        self._queues: list[dict[str, deque[Item]]] = [{} for _ in range(self.levels)]
        self._rows: list[dict[str, int]] = [{} for _ in range(self.levels)]
        self.level_rows = [0] * self.levels
        self.rows = 0
        self._batches = 0

    def __bool__(self) -> bool:
        return self.rows > 0 or any(self._queues)

    def push(self, item: Item) -> None:
        level = self._queues[item.level]
        who = item.tenant if self.fair else ""
        dq = level.get(who)
        if dq is None:
            dq = level[who] = deque()
        dq.append(item)
        self._count(item, item.rows)

    def discard(self, item: Item) -> None:
        """Marks an item taken or dropped (its deque forgets it when it reaches the head)."""
        if not item.gone:
            item.gone = True
            self._count(item, -item.rows)

    def requeue(self, item: Item) -> None:
        """Puts a taken item back at the head of its tenant's queue (a batch cut to a preferred size)."""
        item.gone = False
        level = self._queues[item.level]
        who = item.tenant if self.fair else ""
        dq = level.get(who)
        if dq is None:
            dq = level[who] = deque()
        dq.appendleft(item)
        self._count(item, item.rows)

    def _count(self, item: Item, rows: int) -> None:
        self.rows += rows
        self.level_rows[item.level] += rows
        per = self._rows[item.level]
        per[item.tenant] = per.get(item.tenant, 0) + rows

    def rows_ahead(self, level: int) -> int:
        """Rows that would be served before a new request of this class (its own class and higher)."""
        return sum(self.level_rows[: level + 1])

    def tightest_deadline(self) -> float | None:
        deadlines = [it.deadline for it in self.live() if it.deadline is not None]
        return min(deadlines) if deadlines else None

    def live(self) -> Iterator[Item]:
        for level in self._queues:
            for dq in level.values():
                yield from (it for it in dq if not it.gone)

    def service_order(self) -> Iterator[Item]:
        """Live items in the order the next batch takes them; call `batch_done` once the batch is cut."""
        self._purge()
        lead = None
        if self._lead_every and self._batches % self._lead_every == self._lead_every - 1:
            lead = self._longest_waiting_lower()
        if lead is not None:
            yield from self._round_robin(lead)
        for level in range(self.levels):
            if level != lead:
                yield from self._round_robin(level)

    def batch_done(self, taken: list[Item]) -> None:
        if not taken:
            return
        self._batches += 1
        # The tenants served go to the back of their class's rotation: the next batch starts with the others.
        for item in taken if self.fair else ():
            level = self._queues[item.level]
            dq = level.pop(item.tenant, None)
            if dq is not None:
                level[item.tenant] = dq
        self._purge()

    def _round_robin(self, level: int) -> Iterator[Item]:
        iters = [iter(dq) for dq in self._queues[level].values()]
        while iters:
            still = []
            for it in iters:
                for item in it:
                    if not item.gone:
                        still.append(it)
                        yield item
                        break
            iters = still

    def _longest_waiting_lower(self) -> int | None:
        best: tuple[float, int] | None = None
        for level in range(1, self.levels):
            for dq in self._queues[level].values():
                head = next((it for it in dq if not it.gone), None)
                if head is not None and (best is None or head.enqueued_at < best[0]):
                    best = (head.enqueued_at, level)
        return best[1] if best is not None else None

    def _purge(self) -> None:
        for level in self._queues:
            for tenant in [t for t, dq in level.items() if _trim(dq)]:
                del level[tenant]

    def make_room(self, rows: int, limit: int, level: int, tenant: str) -> list[Item] | None:
        """Frees room for `rows` more of (level, tenant) by shedding queued items of a lower class, or of a
        tenant in the same class holding more rows than this one would; None (nothing shed) when it cannot."""
        if self.levels == 1 and not self.fair:
            return None  # one plain FIFO queue: the newcomer is refused
        victims: list[Item] = []
        while self.rows + rows > limit:
            victim = self._victim(level, tenant, rows)
            if victim is None:
                for item in reversed(victims):  # put them back as they were
                    self.push(item)
                    item.gone = False
                return None
            victims.append(victim)
        return victims

    def _victim(self, level: int, tenant: str, rows: int) -> Item | None:
        for lower in range(self.levels - 1, level - 1, -1):
            per = self._rows[lower]
            candidates = {t: r for t, r in per.items() if r > 0}
            if lower == level:
                mine = per.get(tenant, 0) + rows
                candidates = {t: r for t, r in candidates.items() if t != tenant and r > mine}
            if not candidates:
                continue
            largest = max(candidates, key=candidates.__getitem__)
            dq = self._queues[lower].get(largest if self.fair else "", deque())
            while dq:
                item = dq.pop()
                if not item.gone:
                    self.discard(item)
                    return item
        return None


def _trim(dq: deque[Item]) -> bool:
    """Drops gone items from both ends; True when nothing is left."""
    while dq and dq[0].gone:
        dq.popleft()
    while dq and dq[-1].gone:
        dq.pop()
    return not dq
