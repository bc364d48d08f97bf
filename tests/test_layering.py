"""The import graph of minillm/ keeps DESIGN.md's layer map: no import cycle (imports inside
functions count too), and no module imports a layer above its own.

The graph is read from the source with ast (nothing is imported), so a cycle that Python
happens to tolerate today because an import sits inside a function is still caught."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "minillm"

# DESIGN.md's layers, lowest first: a module may import its own layer and the ones below.
# A name is a module or a subpackage of minillm (the longest match wins).
LAYERS = [
    ("utils", "_switch", "progress", "serialization", "io", "random"),  # helpers, switches, file formats
    ("autograd", "functional", "amp"),                        # the tape and the differentiable ops
    ("tokenizers", "chat"),                                   # tokenizers, chat templates
    ("nn", "optim", "data", "distributed", "corpus", "quantize"),
    ("", ),                                                   # the package itself (minillm/__init__)
    ("sampling",),                                            # pure functions over logits
    ("models",),                                              # one file per family + the interface
    ("checkpoint",),                                          # the checkpoint folder format
    ("train", "train_config", "metrics", "generate"),         # the trainer, the decoding loop
    ("engine", "inference", "chat_session"),                  # batches; loading to run; a conversation
    ("cli", "__main__", "serve"),                             # command line, server
]


def _modules():
    """dict module name -> (path, is_package) of every .py file under minillm/."""
    mods = {}
    for path in glob.glob(os.path.join(ROOT, PACKAGE, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        is_pkg = rel.endswith(".__init__")
        mods[rel[:-len(".__init__")] if is_pkg else rel] = (path, is_pkg)
    return mods


MODULES = _modules()


def _target(name):
    """The module of minillm that importing the dotted `name` runs (a module, or the package
    whose __init__ defines the name), or None: outside minillm, or a compiled extension
    (minillm._C, minillm._bpe), which imports no Python module of the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    while name not in MODULES:
        if _is_extension(name) or "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _is_extension(name):
    base = os.path.join(ROOT, *name.split("."))
    return bool(glob.glob(base + ".*.so") or glob.glob(base + ".*.pyd")) or \
        name in (f"{PACKAGE}._C", f"{PACKAGE}._bpe", f"{PACKAGE}._testing")


def _imports(module):
    """[(imported module, line)] of every import statement in `module`, at any depth."""
    path, is_pkg = MODULES[module]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from pkg import name` runs pkg.name when it is a module, else pkg
            names = [f"{source}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                out.append((target, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module):
    rel = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best, best_len = None, -1
    for rank, names in enumerate(LAYERS):
        for name in names:
            hit = rel == name or (name and rel.startswith(name + "."))
            if hit and len(name) > best_len:
                best, best_len = rank, len(name)
    return best


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"modules not in the layer map (add them to LAYERS, as DESIGN.md places them): {missing}"


def test_no_import_cycle():
    """Tarjan's strongly connected components: any component of two or more modules is a cycle."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    detail = []
    for comp in cycles:
        edges = {(a, b): line for a in comp for b, line in reversed(GRAPH[a]) if b in comp}
        detail.append("; ".join(f"{a} -> {b} (line {line})" for (a, b), line in sorted(edges.items())))
    assert not cycles, "import cycles in minillm: " + " | ".join(detail)


def test_no_module_imports_a_higher_layer():
    bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
           for m, edges in sorted(GRAPH.items()) for t, line in edges
           if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert not bad, "imports against DESIGN.md's layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from minillm.generate import generate\n", "minillm.generate"),
    ("def f():\n    import minillm.train\n", "minillm.train"),
    ("from .. import generate\n", "minillm.generate"),
])
def test_the_checker_sees_imports_at_any_depth_and_relative_ones(tmp_path, monkeypatch, source, expected):
    # a models/ module that imports the decoding loop or the trainer must be reported
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "minillm.models.probe", (str(path), False))
    edges = _imports("minillm.models.probe")
    assert [t for t, _ in edges] == [expected]
    assert _layer(expected) > _layer("minillm.models.probe")
