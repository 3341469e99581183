"""Import-boundary check (make lint): the domain (chains, stores, importer, evaluation) never loads the web layer.

Imports every domain module in one fresh interpreter and fails if fastapi, starlette or langserve came with them,
directly or through anything they import.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB = ("fastapi", "starlette", "langserve", "sse_starlette")
# The web layer: the composition root, HTTP mapping and middleware, API keys and their routes, the routers, the CLI.
WEB_PACKAGES = (
    "server",
    "ticket_rag.api",
    "ticket_rag.auth",
    "ticket_rag.tickets.router",
    "ticket_rag.tickets.triage_routes",
    "ticket_rag.tools.cli",
)


def domain_modules() -> list[str]:
    names = []
    for package in ("chains", "ticket_rag"):
        path = [str(ROOT / package)]
        names += [package] + [f"{package}.{m.name}" for m in pkgutil.walk_packages(path) if not m.ispkg]
        names += [
            f"{package}.{m.name}.{s.name}"
            for m in pkgutil.iter_modules(path)
            if m.ispkg
            for s in pkgutil.iter_modules([str(ROOT / package / m.name)])
        ]
    return sorted(n for n in set(names) if not any(n == w or n.startswith(w + ".") for w in WEB_PACKAGES))


def main() -> int:
    sys.path.insert(0, str(ROOT))
    modules = domain_modules()
    for name in modules:
        importlib.import_module(name)
        loaded = [w for w in WEB if w in sys.modules]
        if loaded:
            print(f"import boundary broken: importing {name} loads {', '.join(loaded)}", file=sys.stderr)
            return 1
    print(f"import boundary holds: {len(modules)} domain modules load none of {', '.join(WEB)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
