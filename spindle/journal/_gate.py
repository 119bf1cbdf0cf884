"""Which keys of a batch run: the check every key passes before it is claimed.

A key runs if neither this run nor an earlier one settled it. The usual batch is decided
with no Python per key::

    keys ──▶ filter of this run's keys ──▶ none seen, not resuming: all run
                 │ maybe seen (a false positive, or a repeat)
                 ▼
             exact check: in flight? waiting for, or in, a commit? in this run's log
             (scanned, or merged into the index once the input repeats itself)?
    resuming ──▶ one lookup in the index per batch: done or failed before, pending,
                 or recorded by this run

The filter (:mod:`._filter`) rules out nearly every key at once; a key it cannot rule out
is checked exactly against the keys in flight (:mod:`._inflight`), the records waiting
for a commit (:mod:`._commit`) and the database (:mod:`._index`). Once a scan of this
run's log finds a real repeat, the input repeats itself, and the log is merged into the
index instead, so that each later check is a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress

from ._base import JournalStats, Key, State
from ._commit import Commits
from ._filter import KeyFilter
from ._index import KeyIndex
from ._inflight import InFlight
from ._log import digest_blob

__all__ = ["KeyGate"]

#: False positives of the Bloom filters of keys other than digests: a positive costs an
#: exact check, which may scan the log.
_FALSE_POSITIVES = 1e-7


class KeyGate:
    """The keys one run of an open journal has claimed, and the decision for new ones.

    Attributes:
        inflight: keys claimed and not recorded.
        db_states: claimed keys the database has a row for (pending or failed in an
            earlier run), with that state: their record replaces it. Empty unless
            resuming.
        digests_only: every key claimed so far was a 16-byte digest (checked once, at
            its claim): a commit then writes keys end to end without checking each
            length again.
        resumed: the journal had items when opened: every key is looked up in the
            index of earlier runs.
    """

    __slots__ = (
        "_commits",
        "_filter",
        "_index",
        "_repeats",
        "_stats",
        "db_states",
        "digests_only",
        "inflight",
        "resumed",
    )

    def __init__(
        self, index: KeyIndex, commits: Commits, stats: JournalStats, *, resumed: bool
    ) -> None:
        self._index = index
        self._commits = commits
        self._stats = stats
        self.resumed = resumed
        self.inflight = InFlight()
        self.db_states: dict[Key, State] = {}
        self.digests_only = True
        self._filter = KeyFilter(false_positives=_FALSE_POSITIVES)
        self._repeats = False  # this run's input repeated a key it had committed

    def decide(self, keys: Sequence[Key], *, claim: bool) -> list[bool]:
        """For each key, whether it runs; with ``claim``, claim those that do and count
        the others (see :meth:`Journal.mark_started`)."""
        inflight = self.inflight
        n = len(keys)
        # Claiming puts every key in the filter at once (one pass over it): a key that is
        # then not claimed is a repeat, one the run has seen anyway. Not when resuming:
        # most keys are then skipped as done, and the filter holds only those that run.
        add_all = claim and not self.resumed
        blob = digest_blob(keys)
        if claim and blob is None:
            self.digests_only = False
        filter_ = self._filter
        maybe = filter_.maybe_add(keys, blob) if add_all else filter_.maybe(keys, blob)
        # The usual case, decided with no Python per key: new to this run (the filter
        # has every key claimed, so none is in flight), to the journal, and to the batch
        # (maybe_add names repeats within it; without it, a set tells).
        if not maybe and not self.resumed and (add_all or len(set(keys)) == n):
            if claim:
                inflight.add_new(list(keys))  # a copy: the caller's list may change
                self._stats.started += n
            return [True] * n
        # Keys this run has already claimed or recorded (exactly: the filter may be wrong).
        seen = self._seen_this_run({keys[i] for i in maybe}) if maybe else set()
        # Resuming: which keys earlier runs left to do (None: the index has no row).
        left = self._index.left_to_do(keys) if self.resumed else None
        result = [False] * n
        duplicates = skipped_done = 0
        run = self._index.run
        db_states = self.db_states
        if left is not None and not seen and len(set(keys)) == n:
            # A batch of distinct keys: only those earlier runs left need a look.
            skipped_done = n - len(left)
            for i, (state, row_run) in left.items():
                if state is not None:
                    if row_run == run:  # recorded by this run, then found in the index
                        duplicates += 1
                        continue
                    if claim:
                        db_states[keys[i]] = state
                result[i] = True
        else:
            # Every occurrence of a key done in an earlier run counts as skipped done, a
            # repeat of a key this run claimed as a duplicate, however the input is cut.
            batch: set[Key] = set()
            done_before: set[Key] = set()
            for i, key in enumerate(keys):
                if key in done_before:
                    skipped_done += 1
                    continue
                if key in seen or key in batch:
                    duplicates += 1
                    continue
                batch.add(key)
                if left is not None:
                    row = left.get(i)
                    if row is None:
                        skipped_done += 1
                        done_before.add(key)
                        continue
                    state, row_run = row
                    if state is not None:
                        if row_run == run:
                            duplicates += 1
                            continue
                        if claim:
                            db_states[key] = state
                result[i] = True
        if claim:
            go = list(compress(keys, result))
            if not add_all:
                self._filter.add(go)
            inflight.add_new(go)
            stats = self._stats
            stats.started += len(go)
            stats.skipped_done += skipped_done
            stats.skipped_duplicate += duplicates
        return result

    def _seen_this_run(self, candidates: set[Key]) -> set[Key]:
        """Which of ``candidates`` this run has claimed: in flight, recorded and waiting
        for a commit, or committed (for those, the run's log is merged into the index)."""
        seen = self.inflight.intersection(candidates)
        rest = candidates - seen
        if rest:
            found = self._commits.holding(rest)
            seen |= found
            rest -= found
        index = self._index
        if rest and index.logged:
            if self._repeats:  # the input repeats itself: index the log once and for all
                self._commits.settle()
                index.merge_own_log()
            else:  # most likely a false positive of the filter: look, without an index
                found = index.scan_own_log(rest)
                self._repeats = bool(found)
                seen |= found
                rest -= found
        if rest:  # this run's failures, and its log once merged, are in the index
            run = index.run
            seen.update(k for k, (_, row_run) in index.query(list(rest)).items() if row_run == run)
        return seen
