import subprocess
import sys


def test_library_does_not_import_prefect_or_vllm():
    code = (
        "import pkgutil, importlib, sys, tracefactory\n"
        "for m in pkgutil.walk_packages(tracefactory.__path__, 'tracefactory.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('prefect', 'vllm', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports(path, module):
    """What `module` (at `path`) imports, inside functions too."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: the package uses absolute imports only"
            base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph():
    """{module: the modules of the package (and flows/) it imports}, imports inside functions counted."""
    from pathlib import Path

    import tracefactory

    root = Path(tracefactory.__file__).parent
    mods = {}
    for f in root.rglob("*.py"):
        name = ".".join(("tracefactory", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = f
    for f in (root.parent / "flows").glob("*.py"):
        mods[".".join(("flows", f.stem)).removesuffix(".__init__")] = f
    graph = {}
    for name, f in mods.items():
        edges = set()
        for target in _imports(f, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def test_no_import_cycles_counting_imports_inside_functions():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 30 and not cycles, cycles


# The package's layers, top to bottom (tracefactory/__init__.py draws them): a module imports its own package and
# the layers below it, never a layer above nor another package of its own layer.
LAYERS = (
    ("tracefactory.cli",),
    ("tracefactory.training",),  # outside a production run: nothing below the CLI may import it
    ("flows",),
    ("tracefactory.publish",),
    ("tracefactory.distributed",),
    ("tracefactory.pipeline",),
    ("tracefactory.stages",),
    ("tracefactory.rewriting",),
    ("tracefactory.backends",),
    ("tracefactory.grading",),
    ("tracefactory.store",),
    ("tracefactory.config", "tracefactory.errors", "tracefactory.console", "tracefactory.redact", "tracefactory"),
)
BASICS = LAYERS[-1]


def _place(module):
    """(layer number, package) of a module; packages are the entries of LAYERS, `tracefactory` only itself."""
    for rank, layer in enumerate(LAYERS):
        for pkg in layer:
            if module == pkg or (pkg != "tracefactory" and module.startswith(pkg + ".")):
                return rank, pkg
    return None


def upward_imports(graph):
    """Every import that goes up a layer or sideways into another package of the same layer (the basics, one
    layer of single modules, may import one another; the cycle check keeps that acyclic)."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = _place(module)
        for target in sorted(targets):
            there = _place(target)
            if here is None or there is None:
                bad.append(f"{module} -> {target} (a module in no layer: place it in LAYERS)")
            elif there[0] < here[0] or (there[0] == here[0] and there[1] != here[1] and here[1] not in BASICS):
                bad.append(f"{module} -> {target}")
    return bad


def test_imports_go_one_way_down_the_layers():
    graph = _graph()
    assert {m for m in graph if _place(m) is None} == set()
    assert upward_imports(graph) == []
    # the check sees what it must refuse: the store reaching up for a scorer's type, a stage for the pipeline,
    # backends and grading importing each other's way up, the pipeline importing training, a sideways step
    planted = {
        "tracefactory.store.io": {"tracefactory.backends.scorers"},
        "tracefactory.stages.grade": {"tracefactory.pipeline"},
        "tracefactory.grading.verify": {"tracefactory.backends.base"},
        "tracefactory.pipeline": {"tracefactory.training.prm"},
        "tracefactory.publish.card": {"tracefactory.training.synth"},
        "tracefactory.config": {"tracefactory.grading.answers"},
    }
    assert len(upward_imports(planted)) == len(planted)
    assert upward_imports({"tracefactory.config": {"tracefactory.redact"}, "tracefactory.cli": {"flows.release"}}) == []


def test_top_of_the_package_holds_only_entry_points_and_basics():
    from pathlib import Path

    import tracefactory

    root = Path(tracefactory.__file__).parent
    top = sorted(p.name for p in root.glob("*.py"))
    assert len(top) <= 8, top
    assert {p.stem for p in root.glob("*.py")} <= {"__init__", "cli", "distributed", "pipeline"} | {
        m.rpartition(".")[2] for m in BASICS
    }
