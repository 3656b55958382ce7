"""A streaming, Drain-style log template miner.

How a line finds its cluster:

1. Mask variables (`masking.mask`, one regex pass) and split into tokens (`masking.tokenize`).
2. Candidates are the clusters in the line's branch of a fixed-depth prefix tree: same token
   count, same leading token(s); a leading token that looks like data (not a plain word) keys as
   ``<*>``.
3. A cluster whose template *covers* the line (every constant token equal) wins. Otherwise the most
   similar candidate wins if its similarity (equal constant tokens / tokens) reaches
   `sim_threshold` and no position holds two different plain words: ``VM Paused`` and
   ``VM Resumed`` are different messages until proven otherwise (step 5).
4. The winner generalises (differing positions become ``<*>``). A template change can make two
   clusters of one branch *compatible* (they differ only where one has ``<*>``): they merge.
5. When `word_variants` clusters of a branch are equal but for one position, each holding a
   different plain word there, that position is a variable (user names, tool names): they merge.
   A handful of alternatives (GET/POST/DELETE, Paused/Resumed/Started/Stopped) stays apart.

A merge keeps the older id; `resolve` maps a merged-away id to its survivor.

Identical masked lines are answered from a memo keyed by the masked text. An entry is only valid
while its token-count bucket has not changed since (a version per bucket), so the memo is a pure
cache: a miner restored with `from_state`, which does not carry it, assigns future lines exactly
as the original would.

The miner is not thread-safe: use one from one thread (the backend runs it off the event loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any

from backend.patterns.masking import (
    MASK,
    MASK_RE,
    build_mask_regex,
    is_wordlike,
    render,
    tokenize,
    tokenize_with_gaps,
)

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class MinerConfig:
    """Miner settings. The defaults are the one configuration for every source."""

    #: share of a line's tokens that must equal the template's constant tokens for it to join
    sim_threshold: float = 0.4
    #: leading tokens used as tree keys after the token count
    depth: int = 1
    #: distinct plain words at one position of otherwise-equal templates that make it a variable
    word_variants: int = 5
    #: constant tokens a template must keep for a word-variant merge to happen
    min_constants: int = 2
    #: masked-line memo entries before it is cleared (0: no memo)
    memo_size: int = 100_000
    #: extra regex alternatives, masked before the built-in kinds
    extra_masks: tuple[str, ...] = ()


@dataclass(slots=True)
class Cluster:
    """A template (``<*>`` marks variables) and the number of lines it has absorbed.

    The miner owns and updates its clusters (size, template); callers read them, never write.
    """

    id: int
    template: str
    size: int
    #: the template as tokens, and whether a space precedes each (to render it as written)
    tokens: tuple[str, ...] = field(repr=False)
    gaps: tuple[bool, ...] = field(repr=False)


_Key = tuple[int, tuple[str, ...]]
# A branch entry: a C-level probe of the template's constant positions, their values, the cluster.
_Entry = tuple[Callable[[Sequence[str]], object], object, Cluster]


def _probe(tokens: Sequence[str]) -> tuple[Callable[[Sequence[str]], object], object]:
    """(getter, expected) such that ``getter(line) == expected`` iff the template covers line."""
    idx = [i for i, t in enumerate(tokens) if t != MASK]
    if not idx:
        return _nothing, ()
    getter = itemgetter(*idx)
    return getter, getter(tokens)


def _nothing(_: Sequence[str]) -> object:
    return ()


class TemplateMiner:
    """Streaming template miner; see the module docstring for the algorithm."""

    def __init__(self, config: MinerConfig | None = None) -> None:
        self.config = cfg = config or MinerConfig()
        if cfg.depth < 1:
            raise ValueError("MinerConfig.depth must be at least 1")
        self._mask_re = build_mask_regex(cfg.extra_masks) if cfg.extra_masks else MASK_RE
        self._next_id = 1
        self._by_id: dict[int, Cluster] = {}
        self._branches: dict[_Key, list[_Entry]] = {}
        self._merged: dict[int, int] = {}
        self._versions: dict[int, int] = {}
        # masked line -> (cluster id, token count, bucket version when stored)
        self._memo: dict[str, tuple[int, int, int]] = {}
        self._wordlike: dict[str, bool] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def clusters(self) -> list[Cluster]:
        """Live clusters, by id."""
        return sorted(self._by_id.values(), key=lambda c: c.id)

    def resolve(self, cluster_id: int) -> int:
        """The id a (possibly merged-away) cluster id lives on as."""
        merged = self._merged
        while cluster_id in merged:
            cluster_id = merged[cluster_id]
        return cluster_id

    def get(self, cluster_id: int) -> Cluster | None:
        """The live cluster for an id, following merges."""
        return self._by_id.get(self.resolve(cluster_id))

    def add(self, message: str) -> Cluster:
        """Learn from `message`; the cluster it joined."""
        masked = self._mask_re.sub(MASK, message.strip())
        hit = self._memo.get(masked)
        if hit is not None and self._versions[hit[1]] == hit[2]:
            c = self._by_id[hit[0]]
            c.size += 1
            return c
        return self._by_id[self._add_masked(masked)]

    def add_many(self, messages: Iterable[str]) -> list[int]:
        """Learn from every message; the id each joined at the time (`resolve` gives today's)."""
        memo_get = self._memo.get
        versions = self._versions
        by_id = self._by_id
        sub = self._mask_re.sub
        add_masked = self._add_masked
        out: list[int] = []
        append = out.append
        for message in messages:
            masked = sub(MASK, message.strip())
            hit = memo_get(masked)
            if hit is not None and versions[hit[1]] == hit[2]:
                by_id[hit[0]].size += 1
                append(hit[0])
            else:
                append(add_masked(masked))
        return out

    def match(self, message: str) -> Cluster | None:
        """The cluster `message` would join, without learning; None if it would start one."""
        masked = self._mask_re.sub(MASK, message.strip())
        hit = self._memo.get(masked)
        if hit is not None and self._versions[hit[1]] == hit[2]:
            return self._by_id[hit[0]]
        found = self._search(tokenize(masked))
        return None if found is None else found[0]

    def to_state(self) -> dict[str, object]:
        """A JSON-serialisable snapshot: settings, clusters and the merge map."""
        return {
            "version": STATE_VERSION,
            "config": {**asdict(self.config), "extra_masks": list(self.config.extra_masks)},
            "next_id": self._next_id,
            "clusters": [
                {
                    "id": c.id,
                    "size": c.size,
                    "tokens": list(c.tokens),
                    "gaps": [int(g) for g in c.gaps],
                }
                for c in self.clusters
            ],
            "merged": [[k, v] for k, v in sorted(self._merged.items())],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TemplateMiner:
        """Rebuild a miner from `to_state` output (after a JSON round trip or not)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported template miner state version {state.get('version')!r}")
        cfg = dict(state["config"])
        cfg["extra_masks"] = tuple(cfg.get("extra_masks", ()))
        miner = cls(MinerConfig(**cfg))
        miner._next_id = int(state["next_id"])
        for raw in state["clusters"]:
            tokens = tuple(str(t) for t in raw["tokens"])
            gaps = tuple(bool(g) for g in raw["gaps"])
            miner._insert(
                Cluster(int(raw["id"]), render(tokens, gaps), int(raw["size"]), tokens, gaps)
            )
        miner._merged = {int(k): int(v) for k, v in state["merged"]}
        return miner

    # -- matching -----------------------------------------------------------------------------

    def _is_word(self, token: str) -> bool:
        w = self._wordlike.get(token)
        if w is None:
            w = is_wordlike(token)
            if len(self._wordlike) < 100_000:
                self._wordlike[token] = w
        return w

    def _key(self, tokens: Sequence[str]) -> _Key:
        if self.config.depth == 1 and tokens:  # the default: spare the generator
            head = tokens[0]
            word = self._wordlike.get(head)
            if word is None:
                word = self._is_word(head)
            return len(tokens), (head if word else MASK,)
        is_word = self._is_word
        return len(tokens), tuple(t if is_word(t) else MASK for t in tokens[: self.config.depth])

    def _search(self, tokens: Sequence[str]) -> tuple[Cluster, bool] | None:
        """(cluster, whether it covers the line) for the cluster `tokens` would join, or None."""
        group = self._branches.get(self._key(tokens))
        if not group:
            return None
        for getter, expected, c in group:
            if getter(tokens) == expected:
                return c, True
        best: Cluster | None = None
        best_score = -1.0
        n = len(tokens)
        is_word = self._is_word
        for _, _, c in group:
            same = 0
            for p, t in zip(c.tokens, tokens, strict=True):
                if p == t:
                    if p != MASK:
                        same += 1
                elif p != MASK and is_word(p) and is_word(t):
                    break  # two different plain words: another message (see _merge_variants)
            else:
                score = same / n
                if score > best_score or (
                    score == best_score and best is not None and c.id < best.id
                ):
                    best, best_score = c, score
        if best is None or best_score < self.config.sim_threshold:
            return None
        return best, False

    # -- learning -----------------------------------------------------------------------------

    def _add_masked(self, masked: str) -> int:
        tokens = tokenize(masked)
        n = len(tokens)
        found = self._search(tokens)
        if found is None:
            toks, gaps = tokenize_with_gaps(masked)
            c = Cluster(self._next_id, render(toks, gaps), 1, tuple(toks), tuple(gaps))
            self._next_id += 1
            self._insert(c)
            c = self._merge_variants(self._merge_compatible(c))
            self._bump(n)
        else:
            c, covers = found
            c.size += 1
            if not covers:
                self._remove(c)
                c.tokens = tuple(
                    p if p == t else MASK for p, t in zip(c.tokens, tokens, strict=True)
                )
                c.template = render(c.tokens, c.gaps)
                self._insert(c)
                c = self._merge_variants(self._merge_compatible(c))
                self._bump(n)
        memo_size = self.config.memo_size
        if memo_size > 0:
            if len(self._memo) >= memo_size:
                self._memo.clear()
            self._memo[masked] = (c.id, n, self._versions[n])
        return c.id

    def _bump(self, n: int) -> None:
        self._versions[n] = self._versions.get(n, 0) + 1

    def _insert(self, c: Cluster) -> None:
        self._by_id[c.id] = c
        getter, expected = _probe(c.tokens)
        group = self._branches.setdefault(self._key(c.tokens), [])
        group.append((getter, expected, c))
        if len(group) > 1 and group[-2][2].id > c.id:
            # Keep id order: merges then happen in an order from_state reproduces.
            group.sort(key=lambda e: e[2].id)
        self._versions.setdefault(len(c.tokens), 0)

    def _remove(self, c: Cluster) -> None:
        del self._by_id[c.id]
        group = self._branches[self._key(c.tokens)]
        group[:] = [e for e in group if e[2] is not c]

    def _absorb(self, a: Cluster, b: Cluster) -> Cluster:
        """Merge two clusters of one branch into the older id, generalising where they differ."""
        keep, gone = (a, b) if a.id < b.id else (b, a)
        self._remove(keep)
        self._remove(gone)
        keep.tokens = tuple(
            x if x == y else MASK for x, y in zip(keep.tokens, gone.tokens, strict=True)
        )
        keep.size += gone.size
        keep.template = render(keep.tokens, keep.gaps)
        self._merged[gone.id] = keep.id
        self._insert(keep)
        return keep

    def _merge_compatible(self, c: Cluster) -> Cluster:
        """Merge the clusters of `c`'s branch that differ from it only where one side has a
        variable, until none is left; the survivor."""
        while True:
            other = next(
                (
                    d
                    for _, _, d in self._branches.get(self._key(c.tokens), ())
                    if d is not c and _compatible(c.tokens, d.tokens)
                ),
                None,
            )
            if other is None:
                return c
            c = self._absorb(c, other)

    def _merge_variants(self, c: Cluster) -> Cluster:
        """If `c` and at least `word_variants - 1` clusters of its branch are equal but for one
        position, where each holds a different plain word, merge them all; the survivor."""
        cfg = self.config
        is_word = self._is_word
        while True:
            by_pos: dict[int, list[Cluster]] = {}
            for _, _, d in self._branches.get(self._key(c.tokens), ()):
                if d is c:
                    continue
                pos = -1
                for i, (x, y) in enumerate(zip(c.tokens, d.tokens, strict=True)):
                    if x != y and x != MASK and y != MASK and is_word(x) and is_word(y):
                        if pos >= 0:
                            pos = -1
                            break
                        pos = i
                if pos >= cfg.depth:  # key positions are never merged: they pick the branch
                    by_pos.setdefault(pos, []).append(d)
            group = next(
                (g for _, g in sorted(by_pos.items()) if len(g) + 1 >= cfg.word_variants), None
            )
            if group is None or sum(1 for t in c.tokens if t != MASK) - 1 < cfg.min_constants:
                return c
            for d in group:
                c = self._absorb(c, d)
            c = self._merge_compatible(c)


def _compatible(a: Sequence[str], b: Sequence[str]) -> bool:
    return all(x in (y, MASK) or y == MASK for x, y in zip(a, b, strict=True))


def mine(
    messages: Sequence[str], config: MinerConfig | None = None
) -> tuple[list[int], dict[int, Cluster]]:
    """Mine `messages` in one go: the FINAL cluster id of every line, and the clusters by id."""
    miner = TemplateMiner(config)
    ids = miner.add_many(messages)
    resolve = miner.resolve
    return [resolve(i) for i in ids], {c.id: c for c in miner.clusters}
