"""The memory level: an LRU of Plans bounded by bytes.

Not thread-safe by itself: :class:`~nerve.runtime.cache.ProgramCache` calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict

from nerve.compiler.plan import Plan


class MemoryLRU:
    """Plans by entry id, least recently used dropped first once ``limit`` bytes are held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._plans: OrderedDict[str, tuple[Plan, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, eid: str) -> Plan | None:
        """The plan held for ``eid`` (now the most recently used), or None."""
        found = self._plans.get(eid)
        if found is None:
            return None
        self._plans.move_to_end(eid)
        return found[0]

    def put(self, eid: str, plan: Plan, nbytes: int) -> None:
        """Hold ``plan`` unless it alone exceeds the limit; drop the oldest to fit."""
        self.drop(eid)
        if nbytes > self.limit:
            return
        self._plans[eid] = (plan, nbytes)
        self.used += nbytes
        while self.used > self.limit and self._plans:
            _, (_, dropped) = self._plans.popitem(last=False)
            self.used -= dropped

    def drop(self, eid: str) -> None:
        """Forget ``eid`` if it is held."""
        old = self._plans.pop(eid, None)
        if old is not None:
            self.used -= old[1]

    def clear(self) -> None:
        self._plans.clear()
        self.used = 0
