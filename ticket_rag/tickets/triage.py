"""Triage: a ticket's likely queue (category), priority, type and tags, from the collection's own labelled tickets.

Two predictors, both over what the store keeps for each ticket (its vector and stemmed terms):
the similarity-weighted vote of the nearest labelled tickets (always available, and what a
prediction "rests on"), and a per-collection linear model (classifier.py) fitted from all labelled
tickets and refitted when the collection's labels change. The service blends the two. A
prediction below the field's confidence floor is withheld with the reason. Nothing here writes a
ticket: triage only suggests.

The confidence floor of each field is chosen from the collection's own data at each refit: the
lowest floor at which out-of-fold predictions (3-fold) are TRIAGE_TARGET_ACCURACY right, so a team
sets the accuracy it needs rather than a raw number (docs/triage.md).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ticket_rag.settings import Settings
from ticket_rag.tickets import classifier
from ticket_rag.tickets.keywords import DESCRIPTION_TERMS, TITLE_TERMS, KeywordAnalyzer
from ticket_rag.tickets.schemas import Evidence, FieldSuggestion, TagSuggestion, Triage
from ticket_rag.tickets.store import embedded_text

logger = logging.getLogger(__name__)

# The single-label fields triage predicts (tags are predicted by the vote alone, several per ticket).
FIELDS = ("category", "priority", "type")
MIN_PER_FIELD = 2  # distinct labels a field needs before it is predicted at all


@dataclass(frozen=True)
class TriageParams:
    """The knobs of triage (starting values; what cross-validation showed about them is in docs/triage.md)."""

    k: int = classifier.KNN_K
    power: float = classifier.KNN_POWER
    tfidf_features: int = classifier.TFIDF_FEATURES
    tfidf_weight: float = classifier.TFIDF_WEIGHT
    l2: float = classifier.L2
    iterations: int = classifier.ITERATIONS
    blend_vote: float = 0.5  # the vote's weight in the blend with the linear model (nested CV, docs/triage.md)

    @classmethod
    def from_settings(cls, settings: Settings) -> TriageParams:
        return cls(k=settings.triage_neighbours)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    value: str | None
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)


def ticket_terms(analyzer: KeywordAnalyzer, title: str, description: str) -> str:
    """The stemmed terms of a ticket, as the store keeps them (title terms, then description terms)."""
    return f"{analyzer.terms(title)} {analyzer.terms(description)}".strip()


@dataclass(frozen=True)
class FittedModels:
    """A collection's TF-IDF vocabulary and one linear model per labelled field."""

    vocabulary: classifier.Vocabulary | None
    tfidf_weight: float
    linear: dict[str, classifier.LinearModel]

    def features(self, vectors: np.ndarray, terms: Sequence[str]) -> classifier.Design:
        return classifier.features(vectors, terms, self.vocabulary, tfidf_weight=self.tfidf_weight)


def fit_models(
    *, vectors: np.ndarray, terms: Sequence[str], labels: Mapping[str, Sequence[str | None]], params: TriageParams
) -> FittedModels:
    """Fit the vocabulary and a linear model for every field with at least MIN_PER_FIELD distinct labels."""
    vocabulary = classifier.Vocabulary.build(terms, size=params.tfidf_features) if params.tfidf_weight > 0 else None
    models = FittedModels(vocabulary=vocabulary, tfidf_weight=params.tfidf_weight, linear={})
    x = models.features(vectors, terms)
    for name, values in labels.items():
        rows = [i for i, v in enumerate(values) if v is not None]
        if len({values[i] for i in rows}) < MIN_PER_FIELD:
            continue
        models.linear[name] = classifier.fit_linear(
            x.rows(rows), [str(values[i]) for i in rows], l2=params.l2, iterations=params.iterations
        )
    return models


def predict_field(
    linear: classifier.LinearModel | None,
    x: classifier.Design | None,
    similarities: Sequence[float],
    neighbour_labels: Sequence[str | None],
    *,
    params: TriageParams,
    blend: bool = True,
) -> Prediction | None:
    """One field's prediction: the linear model blended with the neighbours' vote (the vote alone without a model)."""
    votes = classifier.vote(similarities, neighbour_labels, power=params.power)
    if linear is None or x is None:
        scores = votes
    else:
        probabilities = linear.probabilities(x)[0]
        scores = {c: float(p) for c, p in zip(linear.classes, probabilities, strict=True)}
        if blend:
            w = params.blend_vote if votes else 0.0
            scores = {c: (1 - w) * p + w * votes.get(c, 0.0) for c, p in scores.items()}
    if not scores:
        return None
    ranked = dict(sorted(scores.items(), key=lambda kv: -kv[1]))
    value = next(iter(ranked))
    return Prediction(value=value, confidence=float(ranked[value]), scores=ranked)


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number for each of n examples, shuffled with a fixed seed."""
    order = np.random.default_rng(seed).permutation(n)
    assignment = np.zeros(n, dtype=np.int64)
    assignment[order] = np.arange(n) % folds
    return assignment


def out_of_fold(
    *,
    vectors: np.ndarray,
    terms: Sequence[str],
    labels: Mapping[str, Sequence[str | None]],
    tags: Sequence[Sequence[str]] = (),
    folds: int,
    params: TriageParams,
    methods: Sequence[str] = ("blend",),
) -> dict[str, dict[str, list[Prediction | None]]]:
    """Each ticket's prediction per field and method ('vote', 'linear', 'blend') by models that never saw it.

    Tag predictions (the vote's scores only) are under "tags" / "vote" when tags are given.
    """
    n = len(terms)
    fold = fold_of(n, folds)
    results: dict[str, dict[str, list[Prediction | None]]] = {f: {m: [None] * n for m in methods} for f in labels}
    if tags:
        results["tags"] = {"vote": [None] * n}
    for k in range(folds):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if not len(train) or not len(test):
            continue
        models = fit_models(
            vectors=vectors[train],
            terms=[terms[i] for i in train.tolist()],
            labels={f: [v[i] for i in train.tolist()] for f, v in labels.items()},
            params=params,
        )
        similarities = vectors[test] @ vectors[train].T
        top = np.argsort(-similarities, axis=1)[:, : params.k]
        x_test = models.features(vectors[test], [terms[i] for i in test.tolist()])
        for row, index in enumerate(test):
            neighbours, sims = train[top[row]], similarities[row, top[row]]
            for name, values in labels.items():
                near = [values[i] for i in neighbours]
                for method in methods:
                    linear = models.linear.get(name) if method != "vote" else None
                    results[name][method][index] = predict_field(
                        linear, x_test.rows([row]), sims, near, params=params, blend=method == "blend"
                    )
            if tags:
                scores = classifier.tag_scores(sims, [tags[i] for i in neighbours], power=params.power)
                results["tags"]["vote"][index] = Prediction(value=None, confidence=0.0, scores=scores)
    return results


def floor_for(confidence: np.ndarray, correct: np.ndarray, target: float, min_kept: int = 20) -> float | None:
    """The lowest confidence floor whose kept predictions (at least min_kept) are `target` right; None if none is."""
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    hits = np.cumsum(correct[order])
    kept = np.arange(1, len(order) + 1)
    # A floor keeps every prediction at its confidence: only the ends of groups of equal confidence are floors.
    boundary = np.append(ranked[1:] < ranked[:-1], True)
    ok = (hits / kept >= target) & (kept >= min_kept) & boundary
    if not ok.any():
        return None
    return float(ranked[int(np.flatnonzero(ok)[-1])])


# --- the service ------------------------------------------------------------------------------------------

SERVICE_FOLDS = 3  # out-of-fold predictions from which each field's confidence floor is chosen at every refit
TAG_FLOOR = 0.5  # a tag is suggested when this share of the (similarity-weighted) nearest tickets carry it


@dataclass(frozen=True)
class CollectionModel:
    """What triage learned from one collection's labelled tickets, and the state of the labels it learned from."""

    models: FittedModels
    floors: dict[str, float | None]
    labelled: dict[str, int]
    version: tuple[int, str]
    fitted_seconds: float


# A background fit on 10,000 tickets takes one to two minutes of CPU; at this niceness (Linux schedules each thread
# on its own) requests that arrive meanwhile get most of the cores (bench/triage.py measures both). numpy's BLAS
# worker threads keep their own priority.
BACKGROUND_NICENESS = 10


def _yield_to_requests() -> None:
    """Lower this thread's CPU priority (Linux; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not a process id
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):
        pass


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language from py3langid's n-gram model (None for text without letters)."""
    import py3langid

    if not any(c.isalpha() for c in text):
        return None
    return str(py3langid.classify(text)[0])


class TriageService:
    """Per-collection triage models, fitted from the store on first use and refitted when the labels change."""

    def __init__(self, *, store: Any, settings: Settings, params: TriageParams | None = None) -> None:
        self.store = store
        self.params = params or TriageParams.from_settings(settings)
        self.target = settings.triage_target_accuracy
        self.refresh_seconds = settings.triage_refresh_seconds
        self.analyzer = KeywordAnalyzer(settings.keyword_stemmer)
        self._models: dict[str, CollectionModel] = {}
        self._checked: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._fitting: set[str] = set()  # collections with a background fit under way

    def _lock(self, collection: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(collection, threading.Lock())

    def model(self, collection: str, *, wait: bool = True) -> CollectionModel | None:
        """The collection's current model: fitted now on first use (when wait), refitted when its labels changed.

        With TRIAGE_REFRESH_SECONDS > 0 the check runs at most that often and a refit happens in the
        background while the previous model keeps answering; with 0 it runs on every call, in line.
        """
        current = self._models.get(collection)
        now = time.monotonic()
        if current is not None and now - self._checked.get(collection, 0.0) < self.refresh_seconds:
            return current
        self._checked[collection] = now
        if current is None and wait or self.refresh_seconds == 0:
            return self._refit(collection)
        with self._guard:  # one background fit per collection at a time, however many requests arrive meanwhile
            start = collection not in self._fitting
            self._fitting.add(collection)
        if start:
            try:
                threading.Thread(
                    target=self._refit_quietly, args=(collection,), daemon=True, name=f"triage-{collection}"
                ).start()
            except RuntimeError:  # no thread to be had: the next request tries again
                with self._guard:
                    self._fitting.discard(collection)
                raise
        return current

    def vocabulary(self, collection: str) -> classifier.Vocabulary | None:
        """The collection's term statistics from its last fit (for explaining duplicates), if fitted."""
        current = self._models.get(collection)
        return current.models.vocabulary if current else None

    def _refit_quietly(self, collection: str) -> None:
        _yield_to_requests()
        try:
            self._refit(collection)
        except Exception:  # a background refit must not die loudly; the old model keeps answering
            logger.exception("triage refit of collection %s failed", collection)
        finally:
            with self._guard:
                self._fitting.discard(collection)

    def _refit(self, collection: str) -> CollectionModel | None:
        lock = self._lock(collection)
        with lock:
            version = self.store.labels_version(collection=collection)
            current = self._models.get(collection)
            if current is not None and current.version == version:
                return current
            fitted = self._fit(collection, version)
            if fitted is None:
                self._models.pop(collection, None)
            else:
                self._models[collection] = fitted
            return fitted

    def _fit(self, collection: str, version: tuple[int, str]) -> CollectionModel | None:
        started = time.perf_counter()
        vectors: list[list[float]] = []
        terms: list[str] = []
        labels: dict[str, list[str | None]] = {name: [] for name in FIELDS}
        for _, props, vector in self.store.iterate_labels(collection=collection):
            vectors.append(vector)
            terms.append(f"{props.get(TITLE_TERMS) or ''} {props.get(DESCRIPTION_TERMS) or ''}".strip())
            for name in FIELDS:
                value = props.get(name)
                labels[name].append(str(value) if value not in (None, "") else None)
        if not vectors:
            return None
        x = np.asarray(vectors, dtype=np.float32)
        models = fit_models(vectors=x, terms=terms, labels=labels, params=self.params)
        learned = {name: labels[name] for name in models.linear}
        floors: dict[str, float | None] = {}
        if learned and len(terms) >= SERVICE_FOLDS * 10:
            oof = out_of_fold(vectors=x, terms=terms, labels=learned, folds=SERVICE_FOLDS, params=self.params)
            for name, truth in learned.items():
                pairs = [
                    (p.confidence, p.value == t) for p, t in zip(oof[name]["blend"], truth, strict=True) if p and t
                ]
                confidence = np.array([c for c, _ in pairs])
                correct = np.array([ok for _, ok in pairs], dtype=np.float64)
                floors[name] = floor_for(confidence, correct, self.target) if pairs else None
        seconds = time.perf_counter() - started
        logger.info("triage model of collection %s fitted on %d tickets in %.1f s", collection, len(terms), seconds)
        return CollectionModel(
            models=models,
            floors=floors,
            labelled={n: sum(v is not None for v in labels[n]) for n in models.linear},
            version=version,
            fitted_seconds=seconds,
        )

    def suggest(
        self,
        *,
        title: str,
        description: str,
        collection: str,
        vector: Sequence[float] | None = None,
        min_confidence: float | None = None,
        wait: bool = True,
    ) -> Triage:
        """Suggestions for a ticket's fields from one embedding (reused when given) and one vector search."""
        if vector is None:
            vector = self.store.embed([embedded_text(title, description)])[0]
        hits = self.store.search_by_vector(query_vector=list(vector), collection=collection, limit=self.params.k)
        current = self.model(collection, wait=wait)
        sims = [hit.similarity for hit in hits]
        x = None
        if current is not None:
            terms = ticket_terms(self.analyzer, title, description)
            x = current.models.features(np.asarray([vector], dtype=np.float32), [terms])
            names = [n for n in FIELDS if n in current.models.linear]
        else:
            names = [n for n in FIELDS if len({_field(h.ticket, n) for h in hits} - {None}) > 0]
        fields = {}
        for name in names:
            near = [_field(hit.ticket, name) for hit in hits]
            linear = current.models.linear.get(name) if current else None
            prediction = predict_field(linear, x, sims, near, params=self.params)
            fields[name] = self._suggestion(name, prediction, current, min_confidence, hits, near)
        tag_lists = [hit.ticket.tags for hit in hits]
        tags = []
        if any(tag_lists):
            floor = TAG_FLOOR if min_confidence is None else min_confidence
            scores = classifier.tag_scores(sims, tag_lists, power=self.params.power)
            tags = [TagSuggestion(tag=t, confidence=round(s, 4)) for t, s in scores.items() if s >= floor]
        return Triage(
            collection=collection,
            language=detect_language(f"{title}\n{description}"),
            model="linear+vote" if current is not None else "vote",
            labelled_tickets=current.version[0] if current is not None else 0,
            fields=fields,
            tags=tags,
        )

    def _suggestion(
        self,
        name: str,
        prediction: Prediction | None,
        current: CollectionModel | None,
        min_confidence: float | None,
        hits: Sequence[Any],
        near: Sequence[str | None],
    ) -> FieldSuggestion:
        evidence = [
            Evidence(id=hit.ticket.id, title=hit.ticket.title, similarity=hit.similarity, value=label)
            for hit, label in zip(hits, near, strict=True)
            if label is not None
        ]
        if prediction is None:
            return FieldSuggestion(
                value=None,
                confidence=None,
                floor=min_confidence,
                reason="no similar ticket carries this field",
                evidence=evidence,
            )
        alternatives = {k: round(v, 4) for k, v in list(prediction.scores.items())[1:4]}
        confidence = round(prediction.confidence, 4)
        floor, reason = min_confidence, None
        if floor is None:
            if current is None or name not in current.floors:
                reason = (
                    "too few labelled tickets to choose a confidence floor; send min_confidence to see the best guess"
                )
            else:
                floor = current.floors[name]
                if floor is None:
                    reason = (
                        f"no confidence level gives {self.target:.0%} accuracy on this collection's labelled tickets; "
                        "send min_confidence to see the best guess"
                    )
        if reason is None and floor is not None and confidence < floor:
            reason = f"confidence {confidence:.2f} is below the floor {floor:.2f}"
        value = None if reason else prediction.value
        return FieldSuggestion(
            value=value,
            confidence=confidence,
            floor=None if floor is None else round(floor, 4),
            reason=reason,
            alternatives=({str(prediction.value): confidence} | alternatives) if value is None else alternatives,
            evidence=evidence,
        )


def _field(ticket: Any, name: str) -> str | None:
    value = getattr(ticket, name, None)
    return None if value in (None, "") else str(getattr(value, "value", value))
