"""The real app under uvicorn for benchmarks, with an instant fake LLM so the LLM's speed is not measured.

python bench/serve.py PORT   (Weaviate from WEAVIATE_URL / WEAVIATE_GRPC_URL, settings from the environment)
"""

from __future__ import annotations

import sys

import uvicorn
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from server import create_app
from ticket_rag.api.observability import configure_logging
from ticket_rag.settings import load_settings

if __name__ == "__main__":
    settings = load_settings()
    configure_logging(level="WARNING", json_lines=True)
    llm = FakeListChatModel(responses=["Send the user a fresh reset link from the admin console [T1]."] * 10_000)
    app = create_app(settings, llm=llm)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
