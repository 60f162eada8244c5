"""The package's import graph against docs/architecture.md, so the document cannot drift from the code.

Every `megatron_moviegen` import is read with `ast`, at module level AND inside functions (a function-level import
still ties the rooms together, it only defers the cost): `import megatron_moviegen.x` and
`from megatron_moviegen.x import y` anywhere in a file. Imports inside `if TYPE_CHECKING:` count too. A room is a
subpackage (`data/`) or a top-level module (`generate.py`); the doc's room table gives each a floor. A room may
import rooms on its own floor or below, the rooms' graph has no cycle, and the few upward imports are the doc's
listed exceptions, each of which must still exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "megatron_moviegen"
DOC = ROOT / "docs" / "architecture.md"
ON_THE_WAY = {"curation/"}  # rooms the doc lists that another branch is adding


def room_of(module: str) -> str | None:
    """`megatron_moviegen.data.loader` -> "data/", `megatron_moviegen.generate` -> "generate.py"; None for the
    package itself."""
    parts = module.split(".")
    if parts[0] != "megatron_moviegen" or len(parts) == 1:
        return None
    return f"{parts[1]}/" if (PACKAGE / parts[1]).is_dir() else f"{parts[1]}.py"


def package_imports(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, "module" or "function" level, line) of each megatron_moviegen import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` and `try:` blocks run at import time: module level too
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the package imports by full name")
            names = [node.module]
        else:
            continue
        level = "module" if id(node) in top_level else "function"
        found += [(name, level, node.lineno) for name in names if name.split(".")[0] == "megatron_moviegen"]
    return found


def import_graph() -> list[tuple[str, str, str, str, int]]:
    """(importer file relative to the repo, its room, imported room, level, line) across rooms."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        source_room = room_of(module)
        for name, level, line in package_imports(path):
            target = room_of(name)
            if source_room and target and target != source_room:
                edges.append((str(path.relative_to(ROOT)), source_room, target, level, line))
    return edges


def doc_table(heading: str) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the first markdown table under `heading` in the doc."""
    text = DOC.read_text()
    section = text.split(f"\n## {heading}\n", 1)
    assert len(section) == 2, f"{DOC} has no '## {heading}' section"
    rows = [line for line in section[1].split("\n## ", 1)[0].splitlines() if line.startswith("|")][2:]
    return [[cell.strip().replace("`", "") for cell in row.strip("|").split("|")] for row in rows]


def floors() -> dict[str, int]:
    """room -> floor, from the doc's room table (a cell may name several rooms: `train.py`, `generate.py`)."""
    table = {}
    for floor, rooms, *_ in doc_table("Rooms and floors"):
        for room in re.split(r",\s*", rooms):
            table[room] = int(floor)
    return table


def exceptions() -> set[tuple[str, str]]:
    """(importer file, imported room) of the doc's listed upward imports."""
    return {(importer, imported) for importer, imported, *_ in doc_table("Exceptions to the floors")}


def package_rooms() -> set[str]:
    modules = {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    return modules | {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}


def test_every_room_of_the_package_is_in_the_doc_and_every_room_of_the_doc_exists():
    documented, present = set(floors()), package_rooms()
    assert not present - documented, f"rooms missing from {DOC.name}'s table (add a row with its floor): " \
                                     f"{sorted(present - documented)}"
    stale = documented - present - ON_THE_WAY
    assert not stale, f"rooms in {DOC.name} that the package lacks: {sorted(stale)}"


def test_imports_go_to_the_same_floor_or_below_except_the_listed_ones():
    floor, allowed = floors(), exceptions()
    upward = [f"{file}:{line} ({level} level): {room} (floor {floor[room]}) imports {target} (floor {floor[target]})"
              for file, room, target, level, line in import_graph()
              if floor[target] > floor[room] and (file, target) not in allowed]
    assert not upward, "imports upward, not listed in docs/architecture.md's exceptions:\n" + "\n".join(upward)


def test_every_listed_exception_still_exists():
    used = {(file, target) for file, _, target, _, _ in import_graph()}
    stale = sorted(exceptions() - used)
    assert not stale, f"{DOC.name} lists exceptions the code no longer has (delete their rows): {stale}"


def test_rooms_do_not_import_each_other_in_a_circle():
    allowed = exceptions()
    graph: dict[str, set[str]] = {}
    for file, room, target, _, _ in import_graph():
        if (file, target) not in allowed:
            graph.setdefault(room, set()).add(target)
    state: dict[str, str] = {}

    def visit(room: str, path: list[str]) -> None:
        state[room] = "open"
        for target in sorted(graph.get(room, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("rooms import each other in a circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[room] = "done"

    for room in sorted(graph):
        if room not in state:
            visit(room, [room])


def test_a_function_level_import_is_read_as_well(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom megatron_moviegen.utils.io import atomic_output\n\n\ndef f():\n"
                      "    from megatron_moviegen.recipes import MovieGenConfig\n    import megatron_moviegen.data\n")
    assert package_imports(source) == [("megatron_moviegen.utils.io", "module", 2),
                                       ("megatron_moviegen.recipes", "function", 6),
                                       ("megatron_moviegen.data", "function", 7)]
