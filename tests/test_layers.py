"""Dependencies point one way (the architecture contract, DESIGN.md): a module imports only
modules of its own layer or of a layer below, and infer/ never imports train/. This list is
the one place the order is declared; tests/import_graph.py reads the imports (an AST walk)."""

from __future__ import annotations

import pytest

from import_graph import SRC, imported_modules, module_name

# Top to bottom. A module's layer is that of its longest listed prefix.
LAYERS = [
    ["cxrdet.cli", "cxrdet.commands", "cxrdet.stages"],
    ["cxrdet.serving", "cxrdet.tuning", "cxrdet.evaluation"],
    ["cxrdet.train", "cxrdet.infer"],
    ["cxrdet.families", "cxrdet.formats"],
    [
        "cxrdet.runtime",
        "cxrdet.ensemble",
        "cxrdet.models",
        "cxrdet.data",
        "cxrdet.metrics",
        "cxrdet.tracking",
        "cxrdet.submission",
        "cxrdet.viz",
    ],
    ["cxrdet.config", "cxrdet.io", "cxrdet.errors", "cxrdet.paths", "cxrdet"],
]
FORBIDDEN = [("cxrdet.infer", "cxrdet.train")]  # same layer, one direction only


def layer_of(module: str) -> tuple[int, str]:
    """(layer index from the top, the listed prefix) of a cxrdet module."""
    matches = [
        (len(prefix), index, prefix)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module}: in no layer of tests/test_layers.py LAYERS"
    _, index, prefix = max(matches)
    return index, prefix


def imports() -> list[tuple[str, str]]:
    return [
        (module_name(path), imported)
        for path in sorted(SRC.joinpath("cxrdet").rglob("*.py"))
        for imported in sorted(imported_modules(path))
    ]


@pytest.mark.parametrize("rule", ["layer order", "forbidden"])
def test_no_module_imports_a_higher_layer(rule: str) -> None:
    wrong = []
    for importer, imported in imports():
        (here, here_prefix), (there, there_prefix) = layer_of(importer), layer_of(imported)
        if rule == "layer order" and there < here:
            wrong.append(
                f"{importer} ({here_prefix}) imports {imported} ({there_prefix}), a higher layer"
            )
        if rule == "forbidden" and (here_prefix, there_prefix) in FORBIDDEN:
            wrong.append(f"{importer} imports {imported}")
    assert not wrong, "\n".join(wrong)
