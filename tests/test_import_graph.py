"""The layering of src/pocketgpt, read from its import statements (those inside functions too): no module imports
a layer below its own, and no chain of imports comes back to where it started.

LAYERS is the order data flows in: a module may import from its own layer and from the layers before it.
The guard and the reference engine stand alone: they import no other layer (standard library only).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "pocketgpt"

LAYERS = [
    "errors", "files",  # what every layer shares: the error types, atomic writes
    "reference",  # the executable specification, standard library only
    "data",  # the embedded corpora, the user's text files, splits (standard library)
    "tokenizers",
    "config",
    "formats",  # packed weight layouts (NumPy)
    "kernels",  # compiled kernels (numba) and their NumPy references; decides which runs
    "model",
    "train",
    "generate",
    "quant",
    "interop",
    "serve",
    "guard",  # the tool-call gateway for agents, independent of the model
    "vla",
    "cli",
    "__main__",
]
STANDALONE = {"reference": set(), "guard": {"guard"}}  # these import no other layer (standard library only)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The pocketgpt modules a file imports: a submodule where the name is one, else the package itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pocketgpt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pocketgpt"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m != "pocketgpt"}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer():
    homeless = sorted({layer(m) for m in modules()} - set(LAYERS) - {"__init__"})
    assert not homeless, f"modules outside every layer: {homeless}"


def test_no_module_imports_a_layer_below_its_own():
    known = modules()
    wrong = []
    for name, path in known.items():
        mine = layer(name)
        for target in imports(path, known):
            theirs = layer(target)
            if mine in STANDALONE:
                if theirs not in STANDALONE[mine]:
                    wrong.append(f"{name} -> {target} ({mine} imports nothing of pocketgpt but itself)")
            elif theirs not in LAYERS or LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{name} ({mine}) -> {target} ({theirs})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {name: imports(path, known) & set(known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
