"""Long-lived records kept in shapes the garbage collector leaves alone.

Every full (generation 2) collection of the kernel process walks every object the
collector tracks, holding the GIL: the lab loop, and every session on it, waits. A
list, a dict or a dataclass instance stays tracked for as long as it lives; a plain
tuple whose items are all atoms (str, bytes, numbers, None) or such tuples is
untracked by CPython the first time the collector looks at it, and from then on costs
a collection nothing. A nested tuple, though, is untracked only after what it holds: a
level per collection at worst, and a record that reached the oldest generation still
tracked costs full collections until then. So a record the lab keeps by the thousand
is a tuple of atoms (an event: its nested data values as ``marshal`` bytes), or one
``bytes`` (:func:`pack`: a finished relay message, an auth verdict), which the
collector never tracks at all; many of them sit in sealed chunks (:class:`ChunkedLog`),
and many numbers in one array (:class:`IntRing`).

``tests/test_frozen.py`` checks that each kept shape is untracked after a collection,
so a new field of the wrong kind fails a test instead of slowing every collection.
"""

from __future__ import annotations

import dataclasses
import itertools
import marshal
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

#: Values kept as they are: the collector never tracks them.
ATOMS = frozenset({str, int, float, bool, bytes, type(None)})


class ChunkedLog:
    """A bounded FIFO of records (the newest ``maxlen``), kept in sealed chunks.

    A deque of 200,000 untracked tuples is one tracked object, but each collection still
    visits all 200,000 (twice, reading each one's header: scattered memory, ~75 ms a full
    collection in a loaded soak). Here the records go into a list of at most ``CHUNK``,
    sealed into one tuple when full: the collector untracks a sealed chunk as it does
    the records in it, and then visits 400 chunks instead of 200,000 records. Not
    thread-safe: the owner locks (the :class:`~maillab.events.EventBus` does).
    """

    CHUNK = 512

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._chunks: deque[tuple[Any, ...]] = deque()
        self._tail: list[Any] = []
        self._skip = 0  # records at the front of the first chunk already dropped
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, item: Any) -> None:
        tail = self._tail
        tail.append(item)
        if len(tail) >= self.CHUNK:
            self._chunks.append(tuple(tail))
            self._tail = []
        self._len += 1
        if self._len > self.maxlen:
            self._len -= 1
            if not self._chunks:
                del self._tail[0]
                return
            self._skip += 1
            if self._skip == self.CHUNK:
                self._chunks.popleft()
                self._skip = 0

    def clear(self) -> None:
        self._chunks.clear()
        self._tail = []
        self._skip = self._len = 0

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("ChunkedLog index out of range")
        at = self._skip + index
        sealed = len(self._chunks) * self.CHUNK
        if at >= sealed:
            return self._tail[at - sealed]
        return self._chunks[at // self.CHUNK][at % self.CHUNK]

    def since(self, start: int = 0) -> Iterator[Any]:
        """The records from index ``start`` on, oldest first (a copy must be taken under
        the owner's lock: appending meanwhile changes what is iterated)."""
        at = self._skip + max(0, start)
        first = at // self.CHUNK
        for n, chunk in enumerate(itertools.islice(self._chunks, first, None)):
            yield from (chunk[at % self.CHUNK:] if n == 0 else chunk)
        sealed = len(self._chunks) * self.CHUNK
        yield from self._tail[max(0, at - sealed):]

    def __iter__(self) -> Iterator[Any]:
        return self.since(0)


# A dataclass instance inside a packed value: (tag, class name, field values...).
_DATACLASS = "\x00dataclass"


def pack(value: Any) -> bytes:
    """``value`` as one ``bytes`` (:mod:`marshal`): atoms, lists, dicts, tuples and
    dataclass instances of them, nested. The collector never tracks bytes, however deep
    the value was; :func:`unpack` makes it back. Raises ValueError for anything else."""
    return marshal.dumps(_plain(value))


def unpack(data: bytes, kinds: Iterable[type]) -> Any:
    """What :func:`pack` was given: fresh objects, the dataclasses among ``kinds``."""
    return _restore(marshal.loads(data), {k.__name__: k for k in kinds})


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in ATOMS:
        return value
    if kind is list:
        return [_plain(v) for v in value]
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    if kind is tuple:
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value):
        return (_DATACLASS, kind.__name__, *(_plain(getattr(value, f.name)) for f in dataclasses.fields(value)))
    raise ValueError(f"cannot pack a {kind.__name__}")


def _restore(value: Any, kinds: dict[str, type]) -> Any:
    kind = type(value)
    if kind is list:
        return [_restore(v, kinds) for v in value]
    if kind is dict:
        return {k: _restore(v, kinds) for k, v in value.items()}
    if kind is tuple:
        if value and value[0] == _DATACLASS:
            return kinds[value[1]](*(_restore(v, kinds) for v in value[2:]))
        return tuple(_restore(v, kinds) for v in value)
    return value


class IntRing:
    """The newest ``size`` integers (64-bit), in one array: a deque of 20,000 ints is
    20,000 visits for every collection (a mailbox's change log); an array's numbers are
    not objects, and the collector never looks inside it."""

    def __init__(self, size: int, items: Iterable[int] = ()) -> None:
        self.size = size
        self._items = array("q")
        self._head = 0  # once full: the index of the oldest
        self.extend(items)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, value: int) -> None:
        if len(self._items) < self.size:
            self._items.append(value)
        else:
            self._items[self._head] = value
            self._head = (self._head + 1) % self.size

    def extend(self, values: Iterable[int]) -> None:
        for value in values:
            self.append(value)

    def __iter__(self) -> Iterator[int]:
        """Oldest first."""
        items, head = self._items, self._head
        return itertools.chain(items[head:], items[:head])

    def newest(self, n: int) -> list[int]:
        """The newest ``n`` (all there are, if fewer), oldest first."""
        n = min(max(n, 0), len(self._items))
        return list(itertools.islice(self, len(self._items) - n, None))
