"""Bounded retries for ``cadpipe score --ray``: which units were being worked on when a Ray worker died.

Ray Data retries a task or an actor call whose worker process died (a lost node, a killed actor, a crash in a
native library) without limit; that is what lets a run survive a lost machine, and what would let one unit that
crashes its worker every time keep the run busy for ever. :class:`AttemptLedger` (one Ray actor on the driver's
node) bounds it: a stage calls :meth:`~AttemptLedger.begin` with the units it is about to work on and
:meth:`~AttemptLedger.end` when it is done with them. A unit that is begun again without having been ended was
being worked on when its worker died: a *crash* when the node that ran it is still alive (its process died), a
*loss* when the node is gone (not the unit's fault). The stages:

- work on a batch unit by unit once any of its units has been begun before (so a crash names one unit);
- turn a unit that crashed its worker :data:`MAX_CRASHES` times, or was lost :data:`MAX_ATTEMPTS` times in all,
  into an error row with that reason instead of trying it again (:func:`give_up_reason`).

The ledger also records which actors were started where (:meth:`~AttemptLedger.register`), for the run's log
and the tests. Nothing here imports Ray at module level: the class is made a Ray actor by the backend.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["AttemptLedger", "MAX_CRASHES", "MAX_ATTEMPTS", "give_up_reason"]

MAX_CRASHES = 3  # a unit whose worker process died this many times while on it becomes an error row
MAX_ATTEMPTS = 10  # crashes + losses (lost nodes): bounded too, however the workers died


def give_up_reason(crashes: int, losses: int, stage: str) -> str | None:
    """The error-row reason for a unit with ``crashes`` / ``losses`` earlier attempts, or None to try it (again)."""
    if crashes >= MAX_CRASHES:
        return (f"the Ray worker {stage} it died {crashes} times while on it (a crash or kill of its process, e.g. "
                "out of memory or a fault in a decoder); not tried again")
    if crashes + losses >= MAX_ATTEMPTS:
        return (f"the Ray worker {stage} it was lost {crashes + losses} times ({losses} with its node); "
                "not tried again")
    return None


class AttemptLedger:
    """Open attempts per ``(stage, unit_id)``; counts of the ones that ended with their worker (module docstring).

    ``alive_nodes``: a callable giving the ids of the cluster's live nodes (``ray.nodes()`` by default), asked
    only when an unfinished attempt is found."""

    def __init__(self, alive_nodes=None):
        self.open: dict[tuple[str, str], str] = {}  # (stage, unit) -> node id of the attempt under way
        self.crashes: Counter = Counter()
        self.losses: Counter = Counter()
        self.actors: list[dict] = []
        self._alive_nodes = alive_nodes

    def _alive(self) -> set[str]:
        if self._alive_nodes is not None:
            return set(self._alive_nodes())
        import ray

        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def begin(self, stage: str, units: list[str], node_id: str) -> dict[str, tuple[int, int]]:
        """Open an attempt at each unit of ``units`` on ``node_id``; returns ``{unit: (crashes, losses)}`` counted
        before this attempt (an attempt still open from before is counted now, as a crash or a loss)."""
        alive = None
        out = {}
        for u in units:
            key = (stage, u)
            prev = self.open.get(key)
            if prev is not None:
                alive = self._alive() if alive is None else alive
                (self.crashes if prev in alive else self.losses)[key] += 1
            self.open[key] = node_id
            out[u] = (self.crashes[key], self.losses[key])
        return out

    def end(self, stage: str, units: list[str]) -> None:
        for u in units:
            self.open.pop((stage, u), None)

    def register(self, info: dict) -> None:
        """An actor started (``node_id``, ``pid``, ``gpu_ids``, ``device``, and its handle as ``actor``)."""
        self.actors.append(dict(info))

    def actor_list(self) -> list[dict]:
        return list(self.actors)

    def summary(self) -> dict:
        """Counts for the run's log: actors started, units whose worker crashed / was lost at least once."""
        return {"actors_started": len(self.actors), "nodes": len({a.get("node_id") for a in self.actors}),
                "units_crashed": len(self.crashes), "crashes": sum(self.crashes.values()),
                "units_lost": len(self.losses), "losses": sum(self.losses.values())}
