"""The ONNX Runtime backends against the torch model they are exported from.

The first run exports both variants into the per-user cache (about 15 s for fp32 and 35 s for int8
on 2 cores); later runs load them in a second or two.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from tests.conftest import make_settings
from ticket_rag.embeddings.model import build_embeddings
from ticket_rag.embeddings.onnx import (
    MANIFEST_FILE,
    MAX_PADDING,
    MODEL_FILE,
    OnnxEmbeddings,
    build_onnx_embeddings,
    ensure_onnx_model,
    int8_needs_7bit_weights,
    onnx_cache_dir,
)
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.artifacts import ensure_default_model
from ticket_rag.settings import DEFAULT_MODEL_SHA256

LONG = " ".join(
    f"Step {i}: the export job on server {i % 7} failed with a timeout while copying the nightly backup to the archive."
    for i in range(40)
)  # about 900 tokens, so everything past token 384 is cut off

TEXTS = [
    "Cannot log in after password reset",
    "The reset link in the e-mail says it expired.",
    "Printer on the third floor is jammed again",
    "VPN drops every hour since the update to 5.2",
    "Invoice #4471 shows 19% VAT instead of 7%",
    "How do I export my data to CSV?",
    "Error 500 when uploading a file larger than 10 MB",
    "Mein Drucker druckt nicht mehr, seit das Update installiert wurde.",
    "Bitte setzen Sie mein Passwort zurück, ich komme nicht mehr ins Konto.",
    "Sehr geehrte Damen und Herren, seit gestern erhalten wir keine E-Mails mehr. "
    "Die Fehlermeldung lautet: Postfach voll.",
    "The application crashes on startup with a NullPointerException in the logging module. Steps to reproduce: "
    "open the app, click settings, select language. Expected: the menu opens. Actual: crash.",
    "Our team cannot access the shared drive. We restarted the computers, checked the cables and cleared the "
    "cache, but the drive still does not appear, which blocks the monthly report due on Friday.",
    "Protein kinase inhibition reduced tumour growth by 40% in mice (p < 0.01).",
    LONG,
    "urgent!!!",
    "?",
    "a",
    "",
    "   ",
    "🙂 thanks, works now",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model(make_settings().cache_dir)


@pytest.fixture(scope="module")
def onnx_fp32(model_dir: Path) -> OnnxEmbeddings:
    return build_onnx_embeddings(model_dir, make_settings().cache_dir, "onnx-fp32", source_sha256=DEFAULT_MODEL_SHA256)


@pytest.fixture(scope="module")
def onnx_int8(model_dir: Path) -> OnnxEmbeddings:
    return build_onnx_embeddings(model_dir, make_settings().cache_dir, "onnx-int8", source_sha256=DEFAULT_MODEL_SHA256)


@pytest.fixture(scope="module")
def torch_embeddings() -> Embeddings:
    """sentence-transformers on torch, whatever EMBEDDING_BACKEND defaults to: the reference."""
    return build_embeddings(make_settings(embedding_backend="torch"))


@pytest.fixture(scope="module")
def torch_vectors(torch_embeddings: Embeddings) -> np.ndarray:
    return np.array(torch_embeddings.embed_documents(TEXTS))


def _rows_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("variant", ["onnx_fp32", "onnx_int8"])
def test_vectors_are_768_dimensional_unit_length_float_lists(variant: str, request: pytest.FixtureRequest) -> None:
    backend: OnnxEmbeddings = request.getfixturevalue(variant)
    documents = backend.embed_documents(TEXTS)
    query = backend.embed_query("Cannot log in after password reset")
    assert len(documents) == len(TEXTS) and all(len(v) == 768 for v in documents)
    assert len(query) == 768 and all(isinstance(x, float) for x in query)
    np.testing.assert_allclose(np.linalg.norm(np.array(documents), axis=1), 1.0, atol=1e-5)
    assert backend.embed_documents([]) == []


def test_fp32_is_the_torch_model(onnx_fp32: OnnxEmbeddings, torch_vectors: np.ndarray) -> None:
    """Same tokens, same graph: the fp32 export reproduces sentence-transformers to float rounding."""
    cosine = _rows_cosine(np.array(onnx_fp32.embed_documents(TEXTS)), torch_vectors)
    assert cosine.min() > 0.99999, dict(zip(TEXTS, cosine.round(6), strict=True))


def test_int8_stays_close_to_the_torch_model(onnx_int8: OnnxEmbeddings, torch_vectors: np.ndarray) -> None:
    """Measured on texts with words: mean 0.997, min 0.991 ("?"); on 200 SciFact abstracts mean 0.997, min 0.996.

    On a CPU without VNNI the weights get 7 bits (see int8_needs_7bit_weights): measured on an AMD EPYC
    without it, mean 0.9956, min 0.9896 ("?"), so the bounds there are 0.994 and 0.985.
    Plain dynamic int8 gave 0.87. A text with no words at all ("" or blanks: only <s> and </s>) gets
    0.967; the service never embeds one (titles, descriptions and queries must not be blank).
    """
    cosine = _rows_cosine(np.array(onnx_int8.embed_documents(TEXTS)), torch_vectors)
    worded = np.array([bool(t.strip()) for t in TEXTS])
    report = dict(zip(TEXTS, cosine.round(4), strict=True))
    mean_bound, min_bound = (0.994, 0.985) if int8_needs_7bit_weights() else (0.995, 0.99)
    assert cosine[worded].mean() > mean_bound and cosine[worded].min() > min_bound, report
    assert cosine[~worded].min() > 0.95, report


def test_texts_are_cut_at_384_tokens(onnx_fp32: OnnxEmbeddings) -> None:
    longer, cut = onnx_fp32.embed_documents([LONG + " And then the disk filled up completely.", LONG])
    assert float(np.dot(longer, cut)) > 0.99999
    assert float(np.dot(onnx_fp32.embed_query(LONG[:200]), cut)) < 0.99


def test_batching_and_order_do_not_change_fp32_vectors(onnx_fp32: OnnxEmbeddings) -> None:
    """Texts are sorted by length and padded per batch; each vector still comes back in its place, unchanged."""
    together = np.array(onnx_fp32.embed_documents(TEXTS[::-1]))[::-1]
    alone = np.array([onnx_fp32.embed_query(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_a_batch_of_mixed_lengths_is_split_rather_than_padded(onnx_int8: OnnxEmbeddings) -> None:
    """Queries arriving together (a micro-batch) are cut where padding would pass MAX_PADDING of the real tokens."""
    queries = [f"printer {'offline ' * n}again" for n in (1, 30, 1, 10, 31, 1, 10, 30)]  # 6, 24 and 64-66 tokens
    batches = list(onnx_int8._batches(queries))
    assert sorted(int(r) for rows, _, _ in batches for r in rows) == list(range(len(queries)))  # each text once
    for rows, ids, mask in batches:
        real = int(mask.sum())
        assert ids.size <= (1 + MAX_PADDING) * real, (len(rows), ids.shape, real)
    assert [len(rows) for rows, _, _ in batches] == [
        3,
        2,
        3,
    ]  # the short, the middle and the long ones, not one batch of 8


def _scores(backend: Embeddings, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    q = np.array([backend.embed_query(t) for t in queries])
    return q @ np.array(backend.embed_documents(list(docs))).T


RETRIEVAL_DOCS = [
    "Password reset link expired: how to request a new one from the login page.",
    "VPN client disconnects every 60 minutes after the version 5.2 update.",
    "Printer jam on floor 3: open tray B and remove the stuck paper.",
    "Wrong VAT rate on invoices for reduced-rate products.",
    "Shared network drive not visible after restart.",
    "Drucker im dritten Stock zeigt Papierstau an.",
]
RETRIEVAL_QUERIES = [
    "I can't sign in, the reset mail is too old",
    "vpn keeps dropping",
    "paper stuck in printer",
    "the invoice has the wrong tax",
    "the network share is gone after a reboot",
]


@pytest.mark.parametrize("variant", ["onnx_fp32", "onnx_int8"])
def test_rankings_agree_with_torch(variant: str, request: pytest.FixtureRequest, torch_embeddings: Embeddings) -> None:
    """A tiny retrieval: fp32 ranks exactly as torch; int8 finds the same best ticket, with scores within 0.02."""
    backend: OnnxEmbeddings = request.getfixturevalue(variant)
    expected = _scores(torch_embeddings, RETRIEVAL_QUERIES, RETRIEVAL_DOCS)
    actual = _scores(backend, RETRIEVAL_QUERIES, RETRIEVAL_DOCS)
    assert list(expected.argmax(axis=1)) == [0, 1, 2, 3, 4]
    assert list(actual.argmax(axis=1)) == [0, 1, 2, 3, 4]
    if variant == "onnx_fp32":
        assert (np.argsort(-actual, axis=1) == np.argsort(-expected, axis=1)).all()
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    else:
        np.testing.assert_allclose(actual, expected, atol=0.02)


def test_one_instance_serves_many_threads(onnx_int8: OnnxEmbeddings) -> None:
    expected = [onnx_int8.embed_query(t) for t in TEXTS[:8]]
    results: dict[int, list[float]] = {}

    def work(i: int) -> None:
        results[i] = onnx_int8.embed_query(TEXTS[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-6)


def test_a_corrupted_export_is_refused(model_dir: Path, onnx_int8: OnnxEmbeddings, tmp_path: Path) -> None:
    """A flipped byte in the exported graph stops the load with a message that says how to fix it."""
    source = onnx_cache_dir(make_settings().cache_dir, source_sha256=DEFAULT_MODEL_SHA256, variant="onnx-int8")
    copy = onnx_cache_dir(tmp_path, source_sha256=DEFAULT_MODEL_SHA256, variant="onnx-int8")
    copy.mkdir(parents=True)
    for name in (MODEL_FILE, MANIFEST_FILE):  # not the .verified memo: the copy is checked afresh
        shutil.copyfile(source / name, copy / name)
    assert ensure_onnx_model(model_dir, tmp_path, "onnx-int8", source_sha256=DEFAULT_MODEL_SHA256) == copy / MODEL_FILE
    with (copy / MODEL_FILE).open("r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ConfigError, match=r"sha256 .* expected .*delete .* export it anew"):
        build_onnx_embeddings(model_dir, tmp_path, "onnx-int8", source_sha256=DEFAULT_MODEL_SHA256)


def test_an_export_of_other_weights_is_refused(model_dir: Path, onnx_int8: OnnxEmbeddings, tmp_path: Path) -> None:
    source = onnx_cache_dir(make_settings().cache_dir, source_sha256=DEFAULT_MODEL_SHA256, variant="onnx-int8")
    copy = onnx_cache_dir(tmp_path, source_sha256=DEFAULT_MODEL_SHA256, variant="onnx-int8")
    copy.mkdir(parents=True)
    (copy / MODEL_FILE).symlink_to(source / MODEL_FILE)
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "source_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="other weights"):
        ensure_onnx_model(model_dir, tmp_path, "onnx-int8", source_sha256=DEFAULT_MODEL_SHA256)


def test_unknown_variant_is_a_config_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EMBEDDING_BACKEND"):
        ensure_onnx_model(model_dir, tmp_path, "onnx-fp16", source_sha256=DEFAULT_MODEL_SHA256)  # type: ignore[arg-type]


def test_each_backend_has_its_own_embedding_cache(
    onnx_fp32: OnnxEmbeddings, onnx_int8: OnnxEmbeddings, torch_embeddings: Embeddings
) -> None:
    """Document vectors cached for one backend are never served for another."""
    from ticket_rag.embeddings.cache import model_key

    settings = make_settings()
    keys = {model_key(settings, e) for e in (torch_embeddings, onnx_fp32, onnx_int8)}
    assert len(keys) == 3


def test_build_embeddings_selects_the_backend(onnx_int8: OnnxEmbeddings) -> None:
    built = build_embeddings(make_settings(embedding_backend="onnx-int8"))
    assert isinstance(built, OnnxEmbeddings) and built.variant == "onnx-int8"
    np.testing.assert_allclose(built.embed_query("VPN drops"), onnx_int8.embed_query("VPN drops"), atol=1e-6)
