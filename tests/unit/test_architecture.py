"""The import graph has no cycles (TYPE_CHECKING imports included); lint-imports checks the layers."""

from __future__ import annotations

import grimp


def cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[tuple[str, str]]:
    """Pairs (a, b) where a imports b and b reaches a again."""
    found = []
    for importer in sorted(modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & modules):
            if graph.chain_exists(importer=imported, imported=importer):
                found.append((importer, imported))
    return found


def test_no_module_of_the_service_or_the_loader_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("gatekeeper", "loader")
    modules = {m for m in graph.modules if not m.startswith("gatekeeper.v1")}
    assert cycles(graph, modules) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert ("pkg.a", "pkg.b") in cycles(graph, {"pkg.a", "pkg.b", "pkg.c"})
