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


def test_no_import_cycles_counting_imports_inside_functions():
    from pathlib import Path

    import tracefactory

    root = Path(tracefactory.__file__).parent
    mods = {}
    for f in root.rglob("*.py"):
        name = ".".join(("tracefactory", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = f
    graph = {}
    for name, f in mods.items():
        edges = set()
        for target in _imports(f, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
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
    assert len(mods) > 30 and not cycles, cycles
