"""House rules a reader relies on: a module's ``__all__`` is its real public face (every name
in it exists, and every name another module of the package imports from it is in it); the
domain modules that others import from have one; and comments say what they mean instead of
pointing at documents outside the repository."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import j1mskyd

PACKAGE = Path(j1mskyd.__file__).parent
# Modules others import from that may lack __all__: the package itself, which only offers
# __version__.  (Handler modules under api/ are reached as modules by the route table and need
# none while nobody imports names from them; api/pricing.py, whose field reader and limits
# others share, has one.)
WITHOUT_ALL = {"j1mskyd"}
# Comments and docstrings point at what they mean, not at documents the repository does not hold.
EXTERNAL_REFERENCE = re.compile(r"\bseeds?\b|\b[Ii]ssue \d+|anchors-style|shared/spec", re.IGNORECASE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(package: Path) -> dict[str, dict[str, set[str]]]:
    """module -> name -> the package modules importing that name from it (submodules left out)."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in package.rglob("*.py"):
        module = _module_name(path) if package == PACKAGE else path.relative_to(package).with_suffix("").as_posix()
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                target = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = package.parent / (target + "." + alias.name).replace(".", "/")
                if submodule.with_suffix(".py").exists() or submodule.is_dir():
                    continue
                found.setdefault(target, {}).setdefault(alias.name, set()).add(module)
    return found


def _all_of(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_name_in_all_exists():
    missing = []
    for name, path in _modules().items():
        listed = _all_of(path)
        if listed is None or name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        missing += [f"{name}.{n}" for n in listed if not hasattr(module, n)]
        assert len(listed) == len(set(listed)), f"{name}: a name twice in __all__"
    assert missing == []


def test_all_holds_every_name_other_modules_import():
    modules = _modules()
    outside = []
    for target, names in imported_names(PACKAGE).items():
        path = modules.get(target)
        listed = _all_of(path) if path is not None else None
        if listed is None:
            continue
        outside += [f"{target}.{n} (imported by {', '.join(sorted(by))})" for n, by in sorted(names.items())
                    if n not in listed and not n.startswith("_")]
    assert outside == []


def test_modules_others_import_from_have_all():
    modules = _modules()
    lacking = sorted(t for t in imported_names(PACKAGE) if t in modules and _all_of(modules[t]) is None
                     and t not in WITHOUT_ALL)
    assert lacking == []
    # The exemptions are still needed (a module that gained its __all__ leaves the list).
    assert sorted(t for t in WITHOUT_ALL if _all_of(modules[t]) is not None) == []


def _comments_and_docstrings(source: str) -> list[tuple[int, str]]:
    import io
    import tokenize

    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    return found


def external_references(package: Path) -> list[str]:
    return [f"{path.relative_to(package)}:{line}: {EXTERNAL_REFERENCE.search(text).group(0)!r}"
            for path in sorted(package.rglob("*.py"))
            for line, text in sorted(_comments_and_docstrings(path.read_text())) if EXTERNAL_REFERENCE.search(text)]


def test_comments_name_what_they_mean_not_outside_documents():
    assert external_references(PACKAGE) == []


def test_the_checks_can_fail(tmp_path):
    (tmp_path / "good.py").write_text('"""The J1MSKY API reference\'s id shape."""\n__all__ = ["f"]\ndef f(): ...\n')
    (tmp_path / "bad.py").write_text('"""As the seed says."""\nX = 1  # issue 3 measures this\n')
    (tmp_path / "user.py").write_text("from .good import f, g\n")
    assert external_references(tmp_path) == ["bad.py:1: 'seed'", "bad.py:2: 'issue 3'"]
    names = imported_names(tmp_path)
    assert {n for n in names["good"]} == {"f", "g"}
    assert [n for n in names["good"] if n not in _all_of(tmp_path / "good.py")] == ["g"]
