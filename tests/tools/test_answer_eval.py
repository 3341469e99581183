"""`ticket-rag eval-answers`: its metrics, and the whole harness against answers it must flag (the loopback Groq
scripted with faults) and answers it must pass (the extractive answer), over a SciFact slice and demo tickets."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from pydantic import SecretStr

from chains.evidence import FEATURES
from server import create_app
from tests.conftest import DATASETS, _drop_class
from tests.fakes.groq_server import FakeGroq, Reply
from tests.tools.test_evaluation import cut_scifact_slice
from ticket_rag.settings import Settings
from ticket_rag.tools import answer_metrics as am
from ticket_rag.tools.answer_eval import ANSWERABLE_GOLD, cross_validate_escalation, run_answer_eval, ticket_escalation
from ticket_rag.tools.cli import main

TICKETS = DATASETS / "tickets" / "tobi_bueck_en_de.csv"


def test_citations_count_wrong_and_missing_tickets() -> None:
    cited = am.cited_refs("See [#aaaaaaaa] and [#bbbbbbbb], again [#aaaaaaaa].")
    assert cited == ["#aaaaaaaa", "#bbbbbbbb"]
    scores = am.citation_scores(cited, ["#aaaaaaaa", "#bbbbbbbb", "#cccccccc"], {"#aaaaaaaa", "#cccccccc"})
    assert scores == {"citation_validity": 1.0, "citation_precision": 0.5, "citation_recall": 0.5}
    assert am.citation_scores(["#dddddddd"], ["#aaaaaaaa"], None)["citation_validity"] == 0.0


def test_grounding_counts_invented_facts() -> None:
    score, missing = am.grounding_score(
        'Set "idle timeout" to 30 minutes in v2.4 [#aaaaaaaa]', ["idle timeout is 30 minutes since 2.4"]
    )
    assert score == 1.0 and missing == []
    score, missing = am.grounding_score("Refund 129.95 EUR via form RF-7731 [#aaaaaaaa]", ["Refunded 49.99 EUR."])
    assert score == 0.0 and set(missing) == {"129.95", "RF-7731"}
    assert am.grounding_score("Reset it from the admin console [#aaaaaaaa].", ["..."]) == (None, [])


def test_refusals_and_escalation_scores() -> None:
    assert am.is_refusal("I'm unable to provide VPN-related information.")
    assert not am.is_refusal("Raise the IKE lifetime on the gateway.")
    s = am.escalation_scores([True, True, False, False], [True, False, True, False], [0.9, 0.8, 0.3, 0.1])
    assert (s["precision"], s["recall"], s["f1"], s["auc"]) == (0.5, 0.5, 0.5, 0.75)


def test_escalation_is_cross_validated_by_query() -> None:
    # the first feature separates, the second is noise: held-out AUC must come from fitting on the other half
    records = []
    for n in range(20):
        for mode, top in (("answerable", 0.7 + n * 0.005), ("unanswerable", 0.5 + n * 0.005)):
            features = dict.fromkeys(FEATURES, 0.0)
            features.update(top_cosine=top, margin=(n % 3) / 10)
            records.append(
                {"id": f"q{n}", "mode": mode, "features": features, "should_escalate": mode == "unanswerable"}
            )
    cv = cross_validate_escalation(records)
    assert cv is not None and len(cv["folds"]) == 2
    assert all(f["tested_on"] == 20 for f in cv["folds"])
    assert cv["held_out"]["auc"] > 0.9 and cv["top_cosine_auc"] > 0.9


def test_ticket_questions_should_escalate_when_no_retrieved_resolution_is_close_to_the_real_answer() -> None:
    # two answerable questions (the top resolution is close to the gold), two not; the gate escalated one of each
    rows = [
        {"evidence_score": 0.9, "escalation_risk": 0.1, "escalated": False, "top_resolution_similarity": 0.93},
        {"evidence_score": 0.5, "escalation_risk": 0.5, "escalated": True, "top_resolution_similarity": 0.85},
        {"evidence_score": 0.7, "escalation_risk": 0.3, "escalated": False, "top_resolution_similarity": 0.62},
        {"evidence_score": 0.2, "escalation_risk": 0.8, "escalated": True, "top_resolution_similarity": 0.41},
    ]
    report = ticket_escalation(rows)
    assert report is not None and report["answerable"] == 2
    assert [r["should_escalate"] for r in rows] == [False, False, True, True]
    served = report["as_served"]
    assert (served["precision"], served["recall"], served["auc"]) == (0.5, 0.5, 0.75)
    assert ticket_escalation([{"evidence_score": None, "top_resolution_similarity": 0.9}]) is None
    # the label's edge: exactly ANSWERABLE_GOLD is answerable
    edge = [
        {
            "evidence_score": 0.9,
            "escalation_risk": 0.1,
            "escalated": False,
            "top_resolution_similarity": ANSWERABLE_GOLD,
        }
    ]
    assert ticket_escalation(edge) is not None and edge[0]["should_escalate"] is False


def _ticket_slice(target: Path, rows: int = 60) -> Path:
    with TICKETS.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        kept = [next(reader)] + [row for _, row in zip(range(rows), reader, strict=False)]
    with target.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(kept)
    return target


def test_extractive_answers_are_cited_grounded_and_clean(
    settings: Settings, embeddings: Embeddings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"llm_provider": "extractive"})
    try:
        report = run_answer_eval(
            settings=settings,
            app_factory=create_app,
            output_dir=tmp_path / "out",
            embeddings=embeddings,
            beir_dir=cut_scifact_slice(tmp_path / "scifact", queries=6, distractors=30),
            tickets_csv=_ticket_slice(tmp_path / "tickets.csv"),
            limit=6,
            holdout_every=10,
            progress=False,
        )
    finally:
        _drop_class(settings)
    modes = report["modes"]
    assert set(modes) == {"answerable", "unanswerable", "ticket"}
    assert modes["answerable"]["questions"] == modes["unanswerable"]["questions"] == 6
    assert modes["ticket"]["questions"] == 6
    for m in modes.values():
        assert m["degenerate"] == 0 and m["refusals"] == 0
        assert m["citation_validity"] in (1.0, None) and m["grounding"] in (1.0, None)
        assert m["first_chunk_p50_ms"] is not None and m["first_chunk_p50_ms"] <= m["latency_p50_ms"]
    assert modes["ticket"]["gold_similarity"] is not None and modes["ticket"]["top_resolution_similarity"] is not None
    answered = [q for q in report["questions"] if q["mode"] == "answerable" and not q["escalated"]]
    assert answered and all(q["cited"] for q in answered)
    # the unanswerable variant never retrieves the judged abstracts; the answerable one mostly does
    beir = [q for q in report["questions"] if q["mode"] != "ticket"]
    assert all(not set(q["retrieved"]) & set(q["relevant"]) for q in beir if q["mode"] == "unanswerable")
    assert sum(bool(set(q["retrieved"]) & set(q["relevant"])) for q in beir if q["mode"] == "answerable") >= 5
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["escalation"]["cross_validated"]["held_out"]["questions"] == 12
    assert "| answerable | 6 |" in (tmp_path / "out" / "results.md").read_text()
    assert written["ticket_escalation"]["as_served"]["questions"] == 6


FAULTS: list[tuple[str, list[str]]] = [
    ("wrong citation", ["This is shown by ", "the study [T5]."]),
    ("invented numbers", ["The effect was 73.4% ", "in 1,234 patients [T1]."]),
    ("loop", ["The answer is: "] * 40),
    ("refusal", ["I'm unable to provide ", "medical information."]),
]


@pytest.fixture()
def fake_groq() -> Iterator[FakeGroq]:
    with FakeGroq() as fake:
        yield fake


def test_the_harness_flags_each_fault_of_a_scripted_model(
    settings: Settings, embeddings: Embeddings, tmp_path: Path, fake_groq: FakeGroq
) -> None:
    # The gate off and every ticket kept, so each question reaches the model exactly once, in order.
    settings = settings.model_copy(
        update={
            "llm_provider": "groq",
            "groq_api_key": SecretStr("gsk_test"),
            "groq_base_url": fake_groq.url,
            "rag_escalation_threshold": 0.0,
            "rag_min_similarity": -1.0,
            "llm_max_retries": 0,
            "rag_sufficiency_check": False,
        }
    )
    fake_groq.then(*(Reply(chunks=chunks) for _, chunks in FAULTS))
    try:
        report = run_answer_eval(
            settings=settings,
            app_factory=create_app,
            output_dir=tmp_path / "out",
            embeddings=embeddings,
            beir_dir=cut_scifact_slice(tmp_path / "scifact", queries=2, distractors=30),
            limit=2,
            progress=False,
        )
    finally:
        _drop_class(settings)
    asked: list[dict[str, Any]] = report["questions"]
    assert len(asked) == len(FAULTS) == len(fake_groq.requests)
    wrong, invented, loop, refusal = asked
    assert wrong["cited"] and wrong["citation_precision"] in (0.0, None) and wrong["citation_recall"] in (0.0, None)
    assert wrong["mode"] == "answerable" and wrong["citation_precision"] == 0.0
    assert invented["grounding"] == 0.0 and set(invented["ungrounded"]) == {"73.4", "1,234"}
    assert loop["degenerate"] is not None and loop["guard"]["kind"] == "repetition"
    assert refusal["refusal"] and not refusal["cited"]
    assert report["modes"]["answerable"]["degenerate"] == 1 and report["modes"]["unanswerable"]["degenerate"] == 0
    assert report["modes"]["unanswerable"]["refusals"] == 1


def test_the_command_needs_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-answers", "--output", str(tmp_path)]) == 2
    assert "--beir DIR, --tickets CSV" in capsys.readouterr().err


def test_a_cut_corpus_keeps_the_judged_documents_and_the_closest_distractors() -> None:
    from ticket_rag.tools.answer_eval import hard_distractors
    from ticket_rag.tools.evaluation import BeirDataset, BeirDoc

    corpus = [
        BeirDoc("gold", "Vitamin D", "Vitamin D supplements lower fracture risk in older women."),
        BeirDoc("near", "Vitamin D and bones", "Vitamin D levels and fracture risk were not associated."),
        BeirDoc("far", "Malaria", "Bed nets reduce malaria transmission in children."),
        BeirDoc("mid", "Fractures", "Hip fracture risk rises with age."),
    ]
    dataset = BeirDataset("toy", corpus, {"q1": "Vitamin D lowers fracture risk"}, {"q1": {"gold": 1}})
    cut = hard_distractors(dataset, ["q1"], per_query=2)
    assert [d.id for d in cut.corpus] == ["gold", "near", "mid"]


def test_quoted_answers_are_checked_for_loops_ticket_by_ticket() -> None:
    listing = (
        "1. [#aaaaaaaa] Printer (resolved): Restarted the spooler. We appreciate your patience.\n"
        "2. [#bbbbbbbb] VPN (resolved): Raised the IKE lifetime. We appreciate your patience."
    )
    assert am.degenerate_reason(listing) is not None  # the whole-text rule sees a repeated sentence
    assert am.quoted_degenerate_reason(listing) is None  # two tickets sharing a stock sentence is no loop
    looping = "- Resolution: Reset it now. Reset it now. Reset it now. Reset it now. [#aaaaaaaa]"
    assert am.quoted_degenerate_reason(looping) is not None
