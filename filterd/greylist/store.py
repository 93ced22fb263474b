"""Where greylisting state lives: the store interface, its data types, and the factory.

A store keeps two tables, as postgrey keeps two Berkeley DB files: triplets (first seen,
last seen) and auto-whitelisted clients (count, last counted). Several filterd worker
processes -- later several nodes -- share one store, so every update of one triplet or
one client is applied atomically inside the store to the row as it is then (one SQL
statement, later one Redis script), never as a write of a state read earlier. Every
method takes a batch, because one round trip per request costs more than the decision
itself.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from filterd.config import Config


@dataclass(frozen=True, slots=True)
class Timing:
    """The greylisting time rules, in whole seconds (postgrey works in whole seconds)."""

    delay: int
    retry_window: int
    max_age: int
    awl_clients: int  # 0: no auto-whitelist

    @classmethod
    def from_config(cls, cfg: Config) -> Timing:
        return cls(
            delay=int(cfg.get("greylist_delay")),
            retry_window=int(cfg.get("greylist_retry_window")),
            max_age=int(cfg.get("greylist_max_age")),
            awl_clients=int(cfg.get("greylist_auto_whitelist_clients")),
        )


class Sighting(NamedTuple):
    """One request's triplet key and the client's auto-whitelist key.

    This and the other records built for every request are named tuples: as immutable
    as a frozen dataclass, at a third of its cost to build (a frozen dataclass sets each
    field through ``object.__setattr__``, 0.12 us a field).
    """

    key: str
    client: str


class TripletState(NamedTuple):
    """A triplet just after a sighting was recorded.

    ``first`` is the first-seen time in force now (``now`` for a new triplet, one whose
    retry window or max age ran out, or one first seen in the future); ``passed`` says
    whether the triplet had already passed greylisting before this sighting (postgrey's
    ``last_was_successful``).
    """

    first: int
    passed: bool


def advance(before: tuple[int, int] | None, now: int, timing: Timing) -> TripletState:
    """postgrey's rules for one sighting at ``now`` of a triplet whose (first seen, last
    seen) were ``before`` (None: never seen, or forgotten).

    The store's own update statement applies the same rules to the stored row; a store
    that answers from a row it read (and writes the sighting afterwards) uses this.
    """
    if before is None:
        return TripletState(now, False)
    first, last = before
    passed = last - first >= timing.delay and now - last <= timing.max_age
    if (now - last > timing.max_age
            or (last - first < timing.delay and now - first > timing.retry_window)
            or first > now):
        first = now
    return TripletState(first, passed)


@dataclass(frozen=True, slots=True)
class ClientState:
    """An auto-whitelist entry after an update: passes counted and when last counted."""

    count: int
    last: int


@dataclass(frozen=True, slots=True)
class CleanupStats:
    triplets: int
    clients: int


class StoreBusy(Exception):
    """Another process holds the store's lock right now: nothing was written, try later.

    Raised instead of waiting, so that no request ever waits for another process."""


class StoreUnavailable(Exception):
    """The store cannot be opened or used; the message names it and says why."""


class GreylistStore(ABC):
    """Greylisting state shared by every worker; all methods are atomic per key."""

    #: Called (with what is wrong) when the store finds itself damaged or gone while
    #: serving: the worker then stops, and the master repairs the store (:meth:`verify`)
    #: before starting a new one.
    on_damaged: Callable[[str], None] | None = None

    def verify(self) -> str | None:
        """Blocking, in the master before any worker starts: open the store as a worker
        will and repair what can be repaired. Returns a message for the log when it
        repaired something; raises :class:`StoreUnavailable` when it cannot be used."""
        return None

    @abstractmethod
    async def start(self) -> None:
        """Open the store (create it if needed)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the store; pending writes are finished first."""

    @abstractmethod
    async def see(self, sightings: Sequence[Sighting], now: int,
                  timing: Timing) -> list[TripletState | None]:
        """Record a batch of sightings (distinct keys) and return each triplet's state.

        Per sighting, atomically: if the client is auto-whitelisted (count >= awl_clients,
        counted within max_age) the triplet is left alone and the result is None;
        otherwise the triplet is created or updated by postgrey's rules: last seen = now;
        first seen is reset to now when the triplet is older than max_age, when it has
        not passed yet and was first seen more than retry_window ago, or when its first
        seen lies in the future.
        """

    def see_now(self, sightings: Sequence[Sighting], now: int,
                timing: Timing) -> list[TripletState | None] | None:
        """:meth:`see`, if the store can answer without waiting; else None (nothing done).

        A store whose every answer needs I/O (a network round trip) keeps this default;
        one with a cheap local path lets an uncontended decision skip the batch, the
        extra event-loop turns and the Task it would cost.
        """
        return None

    async def sync(self) -> None:
        """Make every write so far visible to the other workers (and durable as the
        store's own settings make it). A store may otherwise hold sightings back for a
        moment to write many at once."""

    @abstractmethod
    async def count_passes(self, clients: Sequence[str], now: int,
                           timing: Timing) -> list[ClientState | None]:
        """Count a first pass of some triplet for each client, at most once per hour.

        A client whose entry is older than max_age starts again from one. Returns each
        client's entry after counting, or None when it was not counted (counted within
        the last hour). Raises :class:`StoreBusy` (nothing counted) rather than wait.
        """

    @abstractmethod
    async def touch_clients(self, clients: Sequence[str], now: int) -> list[ClientState | None]:
        """Refresh auto-whitelisted clients seen again (at most once per hour, as postgrey).

        Returns each client's entry after the update (None if it has gone). Raises
        :class:`StoreBusy` (nothing refreshed) rather than wait.
        """

    @abstractmethod
    async def cleanup(self, now: int, timing: Timing, interval: int) -> CleanupStats | None:
        """Delete expired triplets and clients, unless another worker did so within interval.

        Expired: not seen for max_age; a triplet that never passed and was not retried
        within retry_window. Returns None when the run was left to another worker;
        raises :class:`StoreBusy` when another process holds the lock.
        """


def open_store(cfg: Config) -> GreylistStore:
    """The store that ``greylist_store`` names (its converter refuses unknown kinds)."""
    kind = cfg.get("greylist_store")
    if kind != "sqlite":
        raise ValueError(f"unknown greylist_store {kind!r}")
    from filterd.greylist.sqlite_store import SqliteGreylistStore  # it builds on this module


    return SqliteGreylistStore(os.path.join(cfg.get("data_directory"), "greylist.db"))
