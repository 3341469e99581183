"""What the isolation suite attacks, generated from the app itself: its operations and the request shapes for each.

The operations are the union of the OpenAPI document's (paths x methods) and every route actually mounted
(LangServe's hidden handlers, the playground, /metrics, the docs), so a route added later is attacked without
editing the suite. The shapes come from each operation's request schema: a minimal valid body with `b` in every
collection slot, and mutations of it (extra top-level fields, batch lists mixing collections, duplicate JSON keys,
other spellings of `collection`, `collection` in the query, b's ids in the path).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from langserve.lzstring import LZString

from ticket_rag.tickets.schemas import COLLECTION_PATTERN

QUESTION = "VPN connection drops every hour after the client update"
FILLER = "Printer on floor three is out of toner"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True, eq=False)
class Param:
    name: str
    schema: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Operation:
    """One (method, path) the app serves, with its resolved JSON request-body schema and its parameters."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    path_params: tuple[Param, ...] = ()
    query_params: tuple[Param, ...] = ()
    documented: bool = True

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Attack:
    """One request: the shape's name says what it tries."""

    shape: str
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Targets:
    """What belongs to b (and so must never be reached from a): its ids, its keys, keys reaching beyond a."""

    b_ticket_ids: list[str]
    foreign_key_ids: list[str]
    collection_a: str = "a"
    collection_b: str = "b"
    extra_path_values: list[str] = field(default_factory=list)


# --- the operations --------------------------------------------------------------------------------------------


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of the OpenAPI document, then every mounted route the document does not describe."""
    spec = app.openapi()
    found: dict[tuple[str, str], Operation] = {}
    for path, item in spec.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            params = [resolve(p, spec) for p in [*shared, *op.get("parameters", [])]]
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            found[(method.upper(), path)] = Operation(
                method=method.upper(),
                path=path,
                body=resolve(body, spec) if body is not None else None,
                path_params=tuple(Param(p["name"], p.get("schema", {})) for p in params if p.get("in") == "path"),
                query_params=tuple(Param(p["name"], p.get("schema", {})) for p in params if p.get("in") == "query"),
            )
    for path, methods in mounted_routes(app):
        template = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        for method in sorted(methods - {"HEAD"}):
            if (method, template) not in found:
                names = re.findall(r"\{(\w+)[^}]*\}", path)
                found[(method, template)] = Operation(
                    method=method,
                    path=template,
                    path_params=tuple(Param(n, {"type": "string"}) for n in names),
                    documented=False,
                )
    return sorted(found.values(), key=lambda o: (o.path, o.method))


def mounted_routes(app: FastAPI) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route the app has mounted, included routers and mounts walked."""
    try:  # FastAPI >= 0.165 keeps included routers as nodes of their own
        from fastapi.routing import iter_route_contexts

        routes: Sequence[Any] = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = app.routes
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        sub = getattr(getattr(route, "original_route", route), "routes", None)
        if methods and path:
            yield path, set(methods)
        elif sub and path is not None:  # a Mount: its routes under its prefix
            for child_path, child_methods in mounted_routes(_Routes(sub)):  # type: ignore[arg-type]
                yield path.rstrip("/") + child_path, child_methods
        elif path is not None and methods is None and not sub:
            yield path, {"GET"}  # a mounted app without routes of its own (static files)


@dataclass
class _Routes:
    routes: list[Any]


def resolve(schema: Any, spec: dict[str, Any], depth: int = 0) -> Any:
    """The schema with every $ref replaced by what it points at."""
    if depth > 40:
        return {}
    if isinstance(schema, dict):
        if "$ref" in schema:
            target: Any = spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return resolve({**target, **rest}, spec, depth + 1)
        return {k: resolve(v, spec, depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(v, spec, depth + 1) for v in schema]
    return schema


# --- example bodies ---------------------------------------------------------------------------------------------


def is_collection_slot(name: str | None, schema: dict[str, Any]) -> bool:
    """A field that names a collection: called `collection`, or a string (or list of them) with the
    collection pattern.
    """
    if name == "collection":
        return True
    for option in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        if str(option.get("pattern", "")).startswith(COLLECTION_PATTERN):
            return True
        items = option.get("items")
        if isinstance(items, dict) and is_collection_slot(None, items):
            return True
    return False


NO_TICKET = str(uuid.UUID(int=1))  # an id no ticket has


def example(
    schema: dict[str, Any], collection: str, *, name: str | None = None, full: bool = False, ticket: str = NO_TICKET
) -> Any:
    """A value the schema accepts, `collection` in every collection slot, `ticket` in every id; `full` sets optional
    fields too."""
    if is_collection_slot(name, schema) and not _is_object(schema):
        is_list = any(o.get("type") == "array" for o in [schema, *schema.get("anyOf", [])])
        return [collection] if is_list else collection
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example(options[0], collection, name=name, full=full, ticket=ticket)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged = {**merged, **part, "properties": {**merged.get("properties", {}), **part.get("properties", {})}}
        return example(merged, collection, name=name, full=full, ticket=ticket)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        return {
            prop: example(sub, collection, name=prop, full=full, ticket=ticket)
            for prop, sub in schema.get("properties", {}).items()
            if prop in required or full or is_collection_slot(prop, sub) or _has_collection_slot(sub)
        }
    if kind == "array":
        item = example(schema.get("items", {}), collection, name=name, full=full, ticket=ticket)
        return [item] if full or schema.get("minItems", 0) >= 1 or _has_collection_slot(schema.get("items", {})) else []
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "uuid":
            return ticket
        if fmt == "date-time":
            return "2025-01-15T09:30:00Z"
        if fmt == "date":
            return "2025-01-15"
        return QUESTION if name in ("question", "query", "q", "text") else FILLER
    if kind == "integer":
        return _bounded(schema, 1)
    if kind == "number":
        return float(_bounded(schema, 0.5))
    if kind == "boolean":
        return False
    return {}


def _bounded(schema: dict[str, Any], value: float) -> Any:
    low, high = (
        schema.get("minimum", schema.get("exclusiveMinimum")),
        schema.get("maximum", schema.get("exclusiveMaximum")),
    )
    if low is not None and value < low:
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    if high is not None and value > high:
        value = high
    return int(value) if float(value).is_integer() and schema.get("type") == "integer" else value


def _is_object(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema


def _has_collection_slot(schema: dict[str, Any], depth: int = 0) -> bool:
    """An object (or list of objects) somewhere below which a collection slot sits: a batch item, a bulk ticket."""
    if depth > 6:
        return False
    for option in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        if _is_object(option):
            if any(
                is_collection_slot(p, s) or _has_collection_slot(s, depth + 1)
                for p, s in option.get("properties", {}).items()
            ):
                return True
        if (
            isinstance(option.get("items"), dict)
            and _is_object(option["items"])
            and _has_collection_slot(option["items"], depth + 1)
        ):
            return True
    return False


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (object keys, the first item of a list), containers and leaves."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield (*prefix, key)
            yield from paths_of(sub, (*prefix, key))
    elif isinstance(value, list) and value:
        yield (*prefix, 0)
        yield from paths_of(value[0], (*prefix, 0))


def get_path(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def set_path(value: Any, path: tuple[Any, ...], new: Any, *, fill_from: Any = None) -> Any:
    """A copy of `value` with `new` at `path`; missing parents are taken from `fill_from`."""
    out = copy.deepcopy(value)
    node, source = out, fill_from
    for index, part in enumerate(path[:-1]):
        source = source[part] if source is not None else None
        missing = (isinstance(node, dict) and part not in node) or (isinstance(node, list) and len(node) <= part)
        if missing:
            filler = (
                copy.deepcopy(source) if source is not None else ({} if isinstance(path[index + 1], str) else [None])
            )
            if isinstance(node, list):
                node.append(filler)
            else:
                node[part] = filler
        node = node[part]
    if isinstance(node, list) and len(node) <= path[-1]:
        node.append(new)
    else:
        node[path[-1]] = new
    return out


def differing_paths(left: Any, right: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of the leaves where two values of one shape differ: the collection slots of the a and b examples."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in left:
            if key in right:
                yield from differing_paths(left[key], right[key], (*prefix, key))
    elif (
        isinstance(left, list)
        and isinstance(right, list)
        and left
        and right
        and not all(isinstance(v, str) for v in left)
    ):
        yield from differing_paths(left[0], right[0], (*prefix, 0))
    elif left != right:
        yield prefix


# --- the shapes --------------------------------------------------------------------------------------------------


def attacks(op: Operation, targets: Targets) -> list[Attack]:
    """Every request shape sent to one operation: documented, then mutated."""
    a, b = targets.collection_a, targets.collection_b
    found: list[Attack] = []
    seen: set[tuple[Any, ...]] = set()

    def add(
        shape: str, url: str, params: Sequence[tuple[str, str]] = (), body: Any = None, raw: bytes | None = None
    ) -> None:
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = (("Content-Type", "application/json"),) if content is not None else ()
        key = (url, tuple(params), content)
        if key not in seen:
            seen.add(key)
            taken = sum(1 for f in found if f.shape == shape or f.shape.startswith(shape + " #"))
            found.append(
                Attack(shape + (f" #{taken + 1}" if taken else ""), op.method, url, tuple(params), content, headers)
            )

    urls = list(_path_variants(op, targets))
    url = urls[0][1]
    queries = list(_query_variants(op, targets))
    body_a = example(op.body, a) if op.body is not None else None
    body_b = example(op.body, b) if op.body is not None else None

    # b's ids (and b itself) in every path parameter, with each query variant
    for path_shape, path_url in urls:
        for query_shape, params in queries:
            add(f"{path_shape} {query_shape}".strip(), path_url, params, body_b)
    if op.body is None:
        if op.method != "GET":
            add(
                "undocumented body naming b",
                url,
                (),
                {"collection": b, "input": {"question": QUESTION, "collection": b}},
            )
        return found

    assert body_a is not None and body_b is not None
    add("documented, collection a", url, (), body_a)
    for query_shape, params in queries[1:]:
        add(f"collection a in the body, {query_shape}", url, params, body_a)
    inner_a, inner_b = _inner(body_a), _inner(body_b)
    extras: dict[str, list[Any]] = {
        "inputs": [[], [inner_b], [inner_a], [inner_a, inner_b], [inner_b, inner_a]],
        "input": [inner_b, inner_a],
        "config": [
            {"configurable": {"collection": b}},
            [{"configurable": {"collection": b}}],
            {"metadata": {"collection": b}},
        ],
        "kwargs": [{"collection": b}, {"input": inner_b}],
        "collection": [b],
        "Collection": [b],
        "collections": [[b], ["*"]],
    }
    for base_name, base in (("a", body_a), ("b", body_b)):
        if not isinstance(base, dict):
            continue
        for key, values in extras.items():
            for value in values:
                mutated = {**base, key: value}
                if mutated != base:
                    add(f"body {base_name} + {key}={_label(value, inner_a, inner_b)}", url, (), mutated)
    for path in differing_paths(body_a, body_b):
        slot = path[-1]
        if isinstance(slot, str):
            add(
                f"body a + {slot!r} spelled {slot.capitalize()!r}",
                url,
                (),
                _sibling(body_a, path, slot.capitalize(), get_path(body_b, path)),
            )
            add(
                f"body a + {slot!r} spelled {slot.upper()!r}",
                url,
                (),
                _sibling(body_a, path, slot.upper(), get_path(body_b, path)),
            )
            for order in ("a then b", "b then a", "a then escaped b"):
                add(f"duplicate key {slot!r} ({order})", url, (), raw=_duplicate(body_a, body_b, path, order))
        else:  # a list item: the a list with b added, and b alone
            add(
                f"list at {_dotted(path[:-1])} mixing a and b",
                url,
                (),
                set_path(body_a, path[:-1], [get_path(body_a, path), get_path(body_b, path)]),
            )
    for enum_path, last in _last_enums(op.body, body_b):  # the highest role, say, for b or for every collection
        add(f"body b with {_dotted(enum_path)} at its highest value", url, (), set_path(body_b, enum_path, last))
        for value in extras["collections"]:
            mutated = set_path({**body_a, "collections": value}, enum_path, last)
            add(
                f"body a + collections={json.dumps(value)} with {_dotted(enum_path)} at its highest value",
                url,
                (),
                mutated,
            )
    return found


def _inner(body: Any) -> Any:
    """What a LangServe envelope carries (its input, or its first batch input); the body itself otherwise."""
    if isinstance(body, dict) and "input" in body:
        return body["input"]
    if isinstance(body, dict) and isinstance(body.get("inputs"), list) and body["inputs"]:
        return body["inputs"][0]
    return body


def _sibling(body: Any, path: tuple[Any, ...], key: str, value: Any) -> Any:
    return set_path(body, (*path[:-1], key), value)


def _duplicate(body_a: Any, body_b: Any, path: tuple[Any, ...], order: str) -> bytes:
    """Raw JSON text of body a with the slot at `path` written twice, a's value and b's."""
    token = f"__dup_{uuid.uuid4().hex}__"
    text = json.dumps(set_path(body_a, path, token))
    key, first, second = json.dumps(path[-1]), json.dumps(get_path(body_a, path)), json.dumps(get_path(body_b, path))
    escaped = '"' + "".join(f"\\u{ord(c):04x}" for c in path[-1]) + '"'
    pair = {
        "a then b": f"{key}: {first}, {key}: {second}",
        "b then a": f"{key}: {second}, {key}: {first}",
        "a then escaped b": f"{key}: {first}, {escaped}: {second}",
    }[order]
    return text.replace(f'{key}: "{token}"', pair).encode()


def _last_enums(schema: dict[str, Any], body: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Top-level enum fields of the body set to their last (highest) value: role admin, say."""
    for prop, sub in schema.get("properties", {}).items():
        options = [sub, *sub.get("anyOf", [])]
        for option in options:
            if option.get("enum") and len(option["enum"]) > 1 and isinstance(body, dict):
                yield (prop,), option["enum"][-1]
                break


def _path_variants(op: Operation, targets: Targets) -> Iterator[tuple[str, str]]:
    """The operation's path with each of b's identifiers in each path parameter (one parameter varied at a time)."""
    if not op.path_params:
        yield "", op.path
        return
    defaults = {p.name: _path_candidates(p, targets)[0][1] for p in op.path_params}
    for param in op.path_params:
        for label, value in _path_candidates(param, targets):
            values = {**defaults, param.name: value}
            yield f"{param.name}={label}", _fill(op.path, values)


def _path_candidates(param: Param, targets: Targets) -> list[tuple[str, str]]:
    schema = param.schema
    fmt = schema.get("format") or next((o.get("format") for o in schema.get("anyOf", []) if o.get("format")), None)
    tickets = [(f"b's ticket {i}", t) for i, t in enumerate(targets.b_ticket_ids)]
    if fmt == "uuid":
        return tickets
    if is_collection_slot(param.name, schema) or param.name in ("name", "collection"):
        return [("b", targets.collection_b), ("B", targets.collection_b.upper())]
    keys = [(f"foreign key {i}", k) for i, k in enumerate(targets.foreign_key_ids)]
    return [*keys, *tickets, ("b", targets.collection_b), *[(v or "empty", v) for v in targets.extra_path_values]]


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def _query_variants(op: Operation, targets: Targets) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """No query; `collection` in the query (documented or not), twice, misspelt; b in the other string parameters."""
    a, b = targets.collection_a, targets.collection_b
    yield "", []
    yield "?collection=b", [("collection", b)]
    yield "?collection=a&collection=b", [("collection", a), ("collection", b)]
    yield "?collection=b&collection=a", [("collection", b), ("collection", a)]
    yield "?collection=a&Collection=b", [("collection", a), ("Collection", b)]
    for param in op.query_params:
        if param.name == "collection" or not _plain_string(param.schema):
            continue
        yield f"?{param.name}=b", [(param.name, b)]
        config = LZString.compressToEncodedURIComponent(json.dumps({"configurable": {"collection": b}}))
        yield f"?{param.name}=<config naming b>", [(param.name, config)]


def _plain_string(schema: dict[str, Any]) -> bool:
    options = [schema, *schema.get("anyOf", [])]
    return any(o.get("type") == "string" and not o.get("format") and not o.get("enum") for o in options)


def _label(value: Any, inner_a: Any, inner_b: Any) -> str:
    """The value in JSON, a's and b's inputs written as <a> and <b>, so shape names stay short and distinct."""
    text = json.dumps(value).replace(json.dumps(inner_a), "<a>").replace(json.dumps(inner_b), "<b>")
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "(body)"


# --- hostile JSON ------------------------------------------------------------------------------------------------

DEPTH = 1000
BIG_INT = "9" * 5000


def nested_list(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int = DEPTH) -> str:
    return '{"a":' * depth + "{}" + "}" * depth


HOSTILE_KINDS = ("non-finite numbers", "huge integers", "deep nesting", "duplicate keys", "encodings")


def hostile_bodies(op: Operation, collection: str, *, ticket: str = NO_TICKET) -> dict[str, list[tuple[str, bytes]]]:
    """Hostile JSON bodies by kind: hostile values in every field of the body, and hostile whole bodies."""
    assert op.body is not None
    minimal = example(op.body, collection, ticket=ticket)
    full = example(op.body, collection, full=True, ticket=ticket)
    leaves = [p for p in paths_of(full) if not isinstance(get_path(full, p), (dict, list))]
    objects = [p for p in paths_of(full) if isinstance(get_path(full, p), dict)]
    cases: dict[str, list[tuple[str, bytes]]] = {kind: [] for kind in HOSTILE_KINDS}

    def at(path: tuple[Any, ...], literal: str) -> bytes:
        token = f"__hostile_{uuid.uuid4().hex}__"
        return json.dumps(set_path(minimal, path, token, fill_from=full)).replace(f'"{token}"', literal).encode()

    for path in leaves:
        for literal in ("NaN", "Infinity", "1e400"):
            cases["non-finite numbers"].append((f"{literal} at {_dotted(path)}", at(path, literal)))
        cases["huge integers"].append((f"a 5000-digit integer at {_dotted(path)}", at(path, BIG_INT)))
    cases["non-finite numbers"] += [
        (f"{literal} as the body", literal.encode()) for literal in ("NaN", "-Infinity", "1e400")
    ]
    cases["huge integers"].append(("a 5000-digit integer as the body", BIG_INT.encode()))

    for path in paths_of(full):
        cases["deep nesting"].append((f"lists nested {DEPTH} deep at {_dotted(path)}", at(path, nested_list())))
    cases["deep nesting"] += [
        (f"the body: lists nested {DEPTH} deep", nested_list().encode()),
        (f"the body: objects nested {DEPTH} deep", nested_object().encode()),
        (
            f"objects nested {DEPTH} deep in an unknown field of the body",
            _with_extra(minimal, "zz_extra", nested_object()),
        ),
    ]
    for path in objects:
        body = set_path(minimal, path, get_path(full, path), fill_from=full)
        cases["deep nesting"].append(
            (
                f"objects nested {DEPTH} deep in an unknown field of {_dotted(path)}",
                _with_extra(body, "zz_extra", nested_object(), path),
            )
        )

    valid = _with_text(minimal, full)  # a body with no field at all (an update) has no key to write twice
    for path in paths_of(valid):
        if isinstance(path[-1], str):
            key, value = json.dumps(path[-1]), json.dumps(get_path(valid, path))
            token = f"__dup_{uuid.uuid4().hex}__"
            text = json.dumps(set_path(valid, path, token)).replace(
                f'{key}: "{token}"', f"{key}: {value}, {key}: {value}"
            )
            cases["duplicate keys"].append((f"duplicate key {_dotted(path)}", text.encode()))

    text = json.dumps(valid)
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        cases["encodings"].append((f"the valid body encoded as {encoding}", text.encode(encoding)))
    accented = text.replace(FILLER, FILLER + " \u00e9").replace(QUESTION, QUESTION + " \u00e9")
    if accented != text:  # a body without free text (a collection name) has nowhere to put one
        cases["encodings"].append(("the valid body in latin-1, with a non-ASCII character", accented.encode("latin-1")))
    cases["encodings"].append(("bytes that are no text", b"\xff\xfe\x00\xd8\x00"))
    return cases


def _with_text(minimal: Any, full: Any) -> Any:
    """The minimal body, with a text field from the full one if it has none (so an encoding has text to change)."""
    if FILLER in json.dumps(minimal) or QUESTION in json.dumps(minimal):
        return minimal
    for path in paths_of(full):
        if get_path(full, path) in (FILLER, QUESTION):
            return set_path(minimal, path, get_path(full, path), fill_from=full)
    return minimal


def _with_extra(body: Any, key: str, raw_value: str, path: tuple[Any, ...] = ()) -> bytes:
    """Raw JSON text of body with an extra field whose value is raw JSON text, in the object at `path`."""
    token = f"__extra_{uuid.uuid4().hex}__"
    target = get_path(body, path) if path else body
    if not isinstance(target, dict):
        return json.dumps(body).encode()
    marked = set_path(body, (*path, key), token) if path else {**body, key: token}
    return json.dumps(marked).replace(f'"{token}"', raw_value).encode()
