"""The Weaviate retriever: langchain-weaviate over the ticket collection, with the cosine similarity of each hit."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_weaviate import WeaviateVectorStore
from pydantic import ConfigDict, Field
from weaviate.classes.config import ConsistencyLevel

from ticket_rag.settings import setting_default
from ticket_rag.tickets.keywords import KeywordAnalyzer, keyword_properties
from ticket_rag.tickets.schemas import SearchFilters
from ticket_rag.tickets.store import weaviate_errors, weaviate_filter

RETURNED = ["title", "description", "status", "priority", "category", "resolution", "external_id", "created_at"]


def build_vectorstore(
    *, client: Any, class_name: str, embeddings: Embeddings, consistency: str = "QUORUM"
) -> WeaviateVectorStore:
    """langchain-weaviate's store over our existing ticket collection (its schema is ours, not its default).

    Its reads run at WEAVIATE_CONSISTENCY like the ticket store's: langchain-weaviate 0.0.8 has no
    setting for it, so the collection handle it searches through is replaced by one that carries it.
    """
    store = WeaviateVectorStore(
        client=client, index_name=class_name, text_key="description", embedding=embeddings, use_multi_tenancy=True
    )
    store._collection = store._collection.with_consistency_level(ConsistencyLevel(consistency))
    return store


class TicketRetriever(BaseRetriever):
    """Past tickets most similar to a question, inside one collection, filtered in Weaviate.

    langchain-weaviate runs every search as a Weaviate hybrid query and returns the fused score;
    we pass alpha (1 = pure vector) and the vectors, and give each document its cosine
    similarity to the question, a score that means the same thing for every question. The
    keyword part (alpha < 1) matches the question's stemmed words against the tickets' stemmed
    terms, exactly as POST /tickets/search in hybrid mode does.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Called per query: the store exists only once the app's Weaviate client is connected.
    vectorstore: Callable[[], WeaviateVectorStore]
    k: int = setting_default("rag_k")
    alpha: float = setting_default("rag_alpha")
    analyzer: KeywordAnalyzer = Field(default_factory=KeywordAnalyzer)
    keyword_properties: list[str] = Field(default_factory=keyword_properties)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        collection: str = "default",
        filters: SearchFilters | None = None,
        k: int | None = None,
        exclude: uuid.UUID | Sequence[uuid.UUID] | None = None,
    ) -> list[Document]:
        store = self.vectorstore()
        assert store.embeddings is not None
        vector = store.embeddings.embed_query(query)
        with weaviate_errors(collection):
            docs = store.similarity_search(
                self.analyzer.terms(query),  # only the keyword part reads it: the vector is given
                k=k or self.k,
                tenant=collection,
                alpha=self.alpha,
                vector=vector,
                filters=weaviate_filter(filters, exclude=exclude),
                include_vector=True,
                return_uuids=True,
                return_properties=list(RETURNED),
                query_properties=self.keyword_properties,
            )
        query_vector = np.asarray(vector, dtype=np.float32)
        for doc in docs:
            ticket_vector = np.asarray(doc.metadata.pop("vector"), dtype=np.float32)
            doc.metadata["similarity"] = round(float(query_vector @ ticket_vector), 6)
            doc.metadata["id"] = doc.metadata.pop("uuid")
            doc.metadata.pop("explain_score", None)
            doc.id = doc.metadata["id"]
        return docs
