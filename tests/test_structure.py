"""The package's shape, read from its source with `ast`: dependencies point one way, no
module imports another's private names, and each model kind is named in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "minigpt"


def _name(path: Path) -> str:
    """A module's name inside the package: "cli", "serve" (a subpackage's __init__), "serve.app"."""
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _paths() -> dict[str, Path]:
    """Every module, subpackages included (texts/ holds data and the script that rebuilds it, no module)."""
    return {_name(p): p for p in sorted(PKG.rglob("*.py")) if p.relative_to(PKG).parts[0] != "texts"}


def _modules() -> dict[str, ast.Module]:
    return {name: ast.parse(p.read_text(encoding="utf-8"), str(p)) for name, p in _paths().items()}


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name (inside minigpt) that `from .module` / `from ..module` means in `importer`."""
    is_package = importer != "__init__" and _paths()[importer].name == "__init__.py"
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + (module.split(".") if module else []))


def _target(name: str, known) -> str:
    """The module an import names: the longest known prefix ("serve.app.create_app" -> "serve.app")."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return parts[0]


def _imports(tree: ast.Module, importer: str = "") -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of a minigpt module,
    at any depth: module level and inside functions alike. Relative imports are resolved
    from `importer`'s package, so minigpt/serve/app.py's `from .protocol import x` is
    serve.protocol and its `from ..sampling import y` is sampling."""
    known = _paths()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:  # from .x import a, b  /  from . import x  /  from ..x import a
                if node.module:
                    full = _resolve(importer, node.level, node.module)
                    out.append((_target(full, known), [a.name for a in node.names], node.lineno))
                else:
                    for a in node.names:
                        full = _resolve(importer, node.level, a.name)
                        out.append((_target(full, known), [], node.lineno))
            elif node.module and node.module.split(".")[0] == "minigpt":
                parts = node.module.split(".")
                if len(parts) > 1:
                    out.append((_target(".".join(parts[1:]), known), [a.name for a in node.names], node.lineno))
                else:
                    out.extend((_target(a.name, known), [], node.lineno) for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "minigpt" and len(parts) > 1:
                    out.append((_target(".".join(parts[1:]), known), [], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {name: set() for name in mods}
    for name, tree in mods.items():
        for target, _, _ in _imports(tree, name):
            if target in mods and target != name and name != "__init__":
                graph[name].add(target)
    return graph


def test_no_import_cycle_counting_function_level_imports():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = path[path.index(m) :] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert set(state) == set(graph) and all(v == 2 for v in state.values())  # every module walked, no cycle met
    assert {"cli", "trainer", "checkpoint", "models"} <= set(graph) and graph["cli"]  # the package was read


def test_the_cycle_check_finds_a_planted_cycle(monkeypatch):
    """The oracle for the test above: a graph with a cycle must fail it."""
    monkeypatch.setattr(__import__(__name__), "_graph", lambda: {"a": {"b"}, "b": {"c"}, "c": {"a"}}, raising=False)
    import tests.test_structure as me

    monkeypatch.setattr(me, "_graph", lambda: {"a": {"b"}, "b": {"c"}, "c": {"a"}})
    with pytest.raises(pytest.fail.Exception, match="a -> b -> c -> a"):
        me.test_no_import_cycle_counting_function_level_imports()


def test_no_private_names_imported_across_modules():
    offenders = []
    for name, tree in _modules().items():
        for target, names, line in _imports(tree, name):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offenders.append(f"minigpt/{name}.py:{line} imports {n} from {target}")
    assert not offenders, "\n".join(offenders)


def test_no_private_attribute_of_another_module_is_used():
    """`tok._hf`, `module._helper`: reaching into another object's or module's privates."""
    offenders = []
    for name, tree in _modules().items():
        imported = {alias for _, names, _ in _imports(tree, name) for alias in names} | {
            t.split(".")[-1] for t, _, _ in _imports(tree, name)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
            ):
                offenders.append(f"minigpt/{name}.py:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_dependencies_point_one_way():
    """Lower layers never import higher ones (config/errors/files at the bottom, the
    command line at the top)."""
    layers = [
        {"errors"},
        {"files", "config"},
        {"kernels", "optim"},
        {"tokenizer", "model", "runtime", "onednn", "bundled", "plan"},
        {"baselines"},
        {"models"},
        {"checkpoint", "data", "corpus", "dataset", "inputs", "sampling", "loop"},
        {"completion", "inference", "viewer", "quantize"},
        {
            "evaluate",
            "trainer",
            "startup",
            "lens",
            "ablation",
            "inspection",
            "hf",
            "serve",
            "pretrained",
            "gguf_export",
        },
        {"cli"},
    ]
    # A subpackage's modules sit on its layer, and have layers of their own inside it.
    inner = {"serve": [{"config"}, {"protocol"}, {"engine"}, {"wire"}, {"app"}, {"server"}]}
    level = {m: (i,) for i, group in enumerate(layers) for m in group}
    for pkg, groups in inner.items():
        level |= {f"{pkg}.{m}": level[pkg] + (j,) for j, group in enumerate(groups) for m in group}
        level[pkg] = level[pkg] + (len(groups),)  # the package's __init__ re-exports them all
    graph = _graph()
    assert {"serve.app", "serve.protocol", "serve.engine"} <= set(graph), "subpackages were not read"
    bad = [
        f"{a} (layer {level[a]}) imports {b} (layer {level[b]})"
        for a, targets in graph.items()
        if a in level
        for b in targets
        if b in level and level[b] > level[a]
    ]
    assert not bad, "\n".join(bad)
    assert set(graph) - {"__init__"} <= set(level), f"modules without a layer: {set(graph) - set(level) - {'__init__'}}"


def test_function_level_imports_say_why():
    """Imports inside functions are only for a fast `--help` or an optional extra, and say so."""
    undocumented = []
    for name, tree in _modules().items():
        if name in ("cli", "__init__"):  # cli imports each command's modules lazily by design (module docstring)
            continue
        lines = _paths()[name].read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    context = " ".join(lines[max(0, node.lineno - 3) : node.end_lineno + 1]).lower()
                    if not any(
                        w in context
                        for w in (
                            "extra",
                            "optional",
                            "lazy",
                            "lazily",
                            "only when",
                            "only here",
                            "backport",
                            "not posix",
                            "--help",
                        )
                    ):
                        undocumented.append(f"{_paths()[name].relative_to(PKG.parent)}:{node.lineno}")
    assert not undocumented, "function-level imports without a comment saying why: " + ", ".join(undocumented)


def test_model_kinds_are_named_only_in_the_registry():
    """A kind's name ("gpt", "lstm", "gru", "ngram") appears as a string only where it is
    defined: the registry and the class that declares it (its model_type)."""
    kinds = {"gpt", "lstm", "gru", "ngram"}
    allowed = {"models", "baselines", "model", "errors"}  # registry; classes (model_type / cell); error wording
    offenders = []
    for name, tree in _modules().items():
        if name in allowed:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for c in [node.left, *node.comparators]:
                    if isinstance(c, ast.Constant) and c.value in kinds:
                        offenders.append(f"minigpt/{name}.py:{node.lineno} compares with {c.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
                offenders.append(f"minigpt/{name}.py:{node.lineno} uses hasattr")
    assert not offenders, "\n".join(offenders)


def test_registry_builds_every_kind_from_flags_and_from_its_json():
    from minigpt import models
    from minigpt.config import ModelArgs

    for name in models.names():
        m = models.from_args(ModelArgs(model=name, n_layer=1, n_head=2, n_embd=16, block_size=8), vocab_size=50)
        assert isinstance(m, models.LanguageModel) and m.model_type == name
        again = models.build(name, m.config.to_dict())
        assert type(again) is type(m) and again.config.to_dict() == m.config.to_dict()
    with pytest.raises(models.ConfigError, match="unknown model kind 'transformer-xl'"):
        models.kind("transformer-xl")


def test_readme_layout_lists_every_module():
    readme = (PKG.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Repository layout") :]
    missing = [p.name for p in _paths().values() if p.name != "__init__.py" and f"  {p.name}" not in layout]
    assert not missing, f"README's layout section does not list {missing}"
