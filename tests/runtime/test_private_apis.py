"""The private APIs of pinned libraries that ticket-rag relies on: each test fails loudly when an upgrade changes
one."""

from __future__ import annotations

import inspect

import weaviate.connect.v4 as weaviate_v4
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.tracers.event_stream import _AstreamEventsCallbackHandler
from langchain_core.tracers.log_stream import LogStreamCallbackHandler
from langchain_weaviate import WeaviateVectorStore
from weaviate.classes.config import ConsistencyLevel
from weaviate.retry import _Retry

from chains.retrieval import build_vectorstore
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, _BoundedRetry, connect


def test_stream_log_and_stream_events_handlers_are_the_ones_the_served_chain_filters_out() -> None:
    """ticket_rag.api.langserve_routes._outputs_only keeps the chain's steps out of stream_log/stream_events by this
    base class.
    """
    assert issubclass(LogStreamCallbackHandler, _StreamingCallbackHandler)
    assert issubclass(_AstreamEventsCallbackHandler, _StreamingCallbackHandler)


def test_weaviate_clients_retry_hook_is_still_the_one_replaced() -> None:
    """weaviate_server.connect replaces weaviate.connect.v4._Retry to bound gRPC retries to about a second."""
    assert "_Retry(" in inspect.getsource(weaviate_v4.ConnectionV4)  # the calls go through the module's name
    for name in ("with_exponential_backoff", "awith_exponential_backoff"):
        theirs = list(inspect.signature(getattr(_Retry, name)).parameters)
        ours = list(inspect.signature(getattr(_BoundedRetry, name)).parameters)
        assert theirs[:4] == ours[:4] == ["self", "count", "error", "f"], (name, theirs)


def test_the_vector_stores_collection_handle_carries_the_consistency_level(weaviate_server: EmbeddedWeaviate) -> None:
    """chains.retrieval.build_vectorstore swaps WeaviateVectorStore._collection for one with a consistency level."""
    assert "_collection" in inspect.getsource(WeaviateVectorStore.__init__)
    with connect(url=weaviate_server.url, grpc_url=f"127.0.0.1:{weaviate_server.grpc_port}") as client:
        assert weaviate_v4._Retry is _BoundedRetry
        try:
            store = build_vectorstore(client=client, class_name="PrivateApiCheck", embeddings=None, consistency="ONE")  # type: ignore[arg-type]
            assert store._collection.consistency_level == ConsistencyLevel.ONE
        finally:
            client.collections.delete("PrivateApiCheck")
