"""The layout's rules, checked on the source (no Dask needed): no import cycles, Dask
only in the engine and the data/IO modules, no module over 400 lines.

Imports are read from every module's AST, imports inside functions included; a
relative import and ``from dask_em.x import y`` (y a submodule or a name) resolve to
the module they load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dask_em

PACKAGE = Path(dask_em.__file__).parent

#: The only modules that may import ``dask`` or ``distributed``: the engine, and the
#: data/IO modules that open stores, convert inputs and write data.
DASK_ALLOWED = {
    "dask_em.engine.cluster": "the client, and the cluster the command line starts",
    "dask_em.engine.passes": "placement, one pass over the data as one graph",
    "dask_em.engine.direct": "passes over persisted data run by each worker, no graph",
    "dask_em.engine.grouped": "a pass over persisted data as one task per worker thread",
    "dask_em.engine.monitoring": "a fit's dashboard spans and events",
    "dask_em.engine.malloc": "the workers' malloc thresholds while a fit runs",
    "dask_em.engine.messages": "distributed's message batching kept short while a fit runs",
    "dask_em.engine.placement": "persisted data: each block's worker, its tasks kept there",
    "dask_em.engine.predict": "prediction graphs",
    "dask_em.engine.row_order": "persisted blocks with their rows in a model's order",
    "dask_em.engine.scatter": "data held in this process scattered to the workers",
    "dask_em.engine.speculation": "the Dask config: whether accelerated runs speculate",
    "dask_em.engine.threads": "BLAS threads of a task: its worker and the workers per host",
    "dask_em.data": "inputs converted to row-chunked dask arrays, Zarr arrays opened",
    "dask_em.sequences": "many sequences as dask arrays, blocks on sequence boundaries",
    "dask_em.stores": "the command line's INPUT opened, its outputs written",
    "dask_em.synthetic": "synthetic data written to Zarr block by block",
    "dask_em.zarr_source": "Zarr arrays as the tasks read them (absent chunks, no secrets)",
    "dask_em.credentials": "storage secrets delivered to the workers in a worker plugin",
}

MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[str]:
    """Every module ``name`` imports, anywhere in its source (absolute names)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if _is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:  # a submodule, or a name the module defines
                submodule = f"{module}.{alias.name}"
                found.append(submodule if submodule in MODULES else module)
    return found


def _internal_edges(name: str) -> set[str]:
    """The dask_em modules ``name`` loads by its imports (a submodule when the imported
    name is one, else the module it comes from)."""
    return {target for target in _imports(name) if target in MODULES and target != name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_walker_sees_relative_function_level_and_submodule_imports(tmp_path):
    assert "dask_em.engine.passes" in _internal_edges("dask_em.engine")  # from-import of names
    assert "dask_em.model_io" in _internal_edges("dask_em.cli.common")  # inside a function
    assert "dask_em.registry" in _internal_edges("dask_em.estimators.base")  # from pkg import mod
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_dask_em_modules():
    graph = {name: _internal_edges(name) for name in MODULES}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_engine_and_the_data_modules_import_dask():
    assert set(DASK_ALLOWED) <= set(MODULES), "the allow-list names a module that is gone"
    offenders = {}
    for name in MODULES:
        dask_imports = sorted(
            {target for target in _imports(name) if target.split(".")[0] in ("dask", "distributed")}
        )
        if dask_imports and name not in DASK_ALLOWED:
            offenders[name] = dask_imports
    assert offenders == {}, f"modules that import Dask outside the engine and IO: {offenders}"


@pytest.mark.parametrize(
    "layer",
    [
        "dask_em.estimators",
        "dask_em.mixture",
        "dask_em.hmm",
        "dask_em.families",
        "dask_em.cli",
        "dask_em.em",
    ],
)
def test_estimators_families_cli_driver_and_em_loop_are_free_of_dask(layer):
    members = [name for name in MODULES if name == layer or name.startswith(layer + ".")]
    assert members
    assert not set(members) & set(DASK_ALLOWED)


def test_no_module_is_over_400_lines():
    too_long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}"
