"""Local files as job inputs for the CLI: `compose --input FILE` and `submit --upload NAME=FILE`.

Every file is checked here first (it exists, its extension names an accepted type) so that a
typo fails before anything is sent; the server checks the bytes again (``POST /uploads``). A
graph names an upload by a placeholder: every string in its nodes' params (lists and objects
included) that is exactly ``@<name>`` becomes the key of the file given as ``--upload <name>=...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dualplane.client import Client
from dualplane.common.media_types import ALLOWED_TYPES, EXTENSION_TYPES

#: A placeholder: the whole string, a name an upload option can give.
PLACEHOLDER = re.compile(r"@([A-Za-z0-9_.-]+)")
#: Where each kind of file goes in a structured intent's ``inputs``.
INTENT_FIELDS = {"audio": "voice_clips", "image": "images", "text": "lyrics"}
#: The characters an upload's name may have (POST /uploads); others become ``_``.
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class InputError(ValueError):
    """A file or an option that cannot be used; nothing was sent."""


def content_type_of(path: Path) -> str:
    """The accepted type a file's extension names; :class:`InputError` for any other file."""
    content_type = EXTENSION_TYPES.get(path.suffix.lower())
    if content_type is None or content_type not in ALLOWED_TYPES:
        accepted = " ".join(sorted(EXTENSION_TYPES))
        raise InputError(f"{path}: {path.suffix or 'no extension'} is not an accepted input (accepted: {accepted})")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return content_type


def upload_name(path: Path) -> str:
    """The file's name as an upload may be called (at most 128 of the allowed characters)."""
    name = _NAME_CHARS.sub("_", path.name)
    return name[-128:] if len(name) > 128 else name


def upload(client: Client, path: Path, *, consent: bool) -> dict[str, Any]:
    """Upload one checked file; its record."""
    return client.upload(upload_name(path), path.read_bytes(), content_type_of(path), consent=consent)


def intent_with_inputs(client: Client, prompt: str, files: list[str], *, consent: bool) -> dict[str, Any]:
    """A structured intent: ``prompt`` and the uploaded files by kind (audio: voice clips,
    images: images, a .txt: its words as the lyrics)."""
    paths = [Path(f) for f in files]
    kinds = [ALLOWED_TYPES[content_type_of(p)] for p in paths]  # every file checked before any is sent
    if kinds.count("text") > 1:
        raise InputError("give at most one lyrics file (.txt)")
    inputs: dict[str, Any] = {}
    for path, kind in zip(paths, kinds, strict=True):
        record = upload(client, path, consent=consent)
        if kind == "text":
            inputs["lyrics"] = path.read_text(encoding="utf-8-sig")
        else:
            inputs.setdefault(INTENT_FIELDS[kind], []).append(record["key"])
    return {"prompt": prompt, "inputs": inputs}


def parse_uploads(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` options by name, each file checked."""
    found: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not PLACEHOLDER.fullmatch(f"@{name}") or not path:
            raise InputError(f"--upload {spec!r}: give NAME=PATH (NAME of letters, digits, '_', '.', '-')")
        if name in found:
            raise InputError(f"--upload {name} is given twice")
        content_type_of(Path(path))
        found[name] = Path(path)
    return found


def placeholders(graph: Any) -> set[str]:
    """The names of every ``@name`` in the graph's params."""
    found: set[str] = set()

    def note(name: str) -> str:
        found.add(name)
        return f"@{name}"  # left as it was

    _walk_params(graph, note)
    return found


def bind_uploads(client: Client, graph: dict[str, Any], specs: list[str], *, consent: bool) -> dict[str, Any]:
    """The graph with every ``@name`` replaced by the key of the file ``--upload name=PATH``
    gave. An ``@name`` no option gives, or an option no ``@name`` uses, is an :class:`InputError`
    before anything is uploaded."""
    files = parse_uploads(specs)
    used = placeholders(graph)
    if unknown := sorted(used - files.keys()):
        raise InputError("the graph names " + ", ".join(f"@{n}" for n in unknown)
                         + " but no --upload gives " + ("it" if len(unknown) == 1 else "them")
                         + " (--upload NAME=PATH)")
    if unused := sorted(files.keys() - used):
        raise InputError("--upload " + ", ".join(unused) + ": no " + ", ".join(f"@{n}" for n in unused)
                         + " in the graph's params")
    keys = {name: upload(client, path, consent=consent)["key"] for name, path in files.items()}
    _walk_params(graph, keys.__getitem__)
    return graph


def _walk_params(graph: Any, replace: Any) -> None:
    """Call ``replace(name)`` for every ``@name`` string in the nodes' params and put its
    answer in that string's place."""
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, dict) and isinstance(node.get("params"), dict):
            _replace_in(node["params"], replace)


def _replace_in(value: Any, replace: Any) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for slot, item in list(items):
        if isinstance(item, str) and (match := PLACEHOLDER.fullmatch(item)):
            value[slot] = replace(match.group(1))
        elif isinstance(item, dict | list):
            _replace_in(item, replace)
