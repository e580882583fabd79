"""The abstract-or-final rule (STYLE.md, rule 1) for every public class."""

import abc
import ast
import dataclasses
import inspect
from pathlib import Path

import equinox as eqx

import lapsample


def _public_modules():
    for name in lapsample.__all__ if hasattr(lapsample, "__all__") else dir(lapsample):
        obj = getattr(lapsample, name)
        if inspect.isclass(obj) and issubclass(obj, eqx.Module):
            yield name, obj


def _is_abstract(cls) -> bool:
    return bool(
        inspect.isabstract(cls)
        or getattr(cls, "__abstractvars__", None)
        or getattr(cls, "__abstractclassvars__", None)
    )


def _all_package_modules():
    seen = set()
    stack = [cls for _, cls in _public_modules()]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("lapsample"):
                stack.append(sub)
    return seen


def test_abstract_names_start_with_abstract():
    for name, cls in _public_modules():
        if _is_abstract(cls):
            assert name.startswith("Abstract"), f"{name} is abstract"
        else:
            assert not name.startswith("Abstract"), f"{name} is not abstract"


def test_no_concrete_class_has_a_concrete_subclass_in_the_package():
    for cls in _all_package_modules():
        if _is_abstract(cls):
            continue
        for sub in cls.__subclasses__():
            assert not sub.__module__.startswith("lapsample"), (
                f"{sub.__qualname__} subclasses the concrete {cls.__qualname__}"
            )


def test_fields_live_in_one_class_of_each_mro():
    for cls in _all_package_modules():
        if _is_abstract(cls):
            continue
        owners = set()
        for base in cls.__mro__:
            annotations = vars(base).get("__annotations__", {})
            own = [
                f.name
                for f in dataclasses.fields(cls)
                if f.name in annotations
                and "AbstractVar" not in str(annotations[f.name])
            ]
            if own:
                owners.add(base)
        assert len(owners) <= 1, f"{cls.__qualname__} has fields in {owners}"


def test_abstract_base_classes_use_abc():
    for _, cls in _public_modules():
        if cls.__name__.startswith("Abstract"):
            assert isinstance(cls, abc.ABCMeta) or inspect.isabstract(cls)


# --------------------------------------------------------------------------------
# The shape of the package (docs: design/code-review §3): one concept per module,
# imports only downward. Read from the source files, so nothing is imported.
# --------------------------------------------------------------------------------

SOURCE = Path(lapsample.__file__).resolve().parent

# Files allowed over MAX_LINES, each with the reason its size is earned.
MAX_LINES = 400
LARGE_FILES = {
    "_numpyro.py": "one front end (NumPyro models as input), like lineax's _operator",
    "_linalg/banded.py": "one concept (banded matrices as block chains): factorise, "
    "solve, draw, logdet and selected inverse share the recurrences",
    "_marginal/latent_gaussian.py": "one public class whose docstring, validation "
    "and custom-VJP shell are about half the file",
}

# Third-party packages that are optional extras of lapsample, imported where used
# so that `import lapsample` does not need them.
OPTIONAL_PACKAGES = {"arviz", "matplotlib", "pandas", "numpyro", "tqdm"}


def _source_files():
    return sorted(p for p in SOURCE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_imports(path: Path, tree: ast.Module):
    """`(node, module, name)` of every import of a lapsample module in `tree`;
    `name` is the imported name (a submodule when `module.name` is a module)."""
    modules = {_module_name(p) for p in _source_files()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node) if node.level else node.module or ""
            if not module.split(".")[0] == "lapsample":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in modules:
                    yield node, sub, None
                else:
                    yield node, module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lapsample":
                    yield node, alias.name, None


def _parsed():
    return [(p, ast.parse(p.read_text())) for p in _source_files()]


def test_no_import_cycle_among_modules():
    graph = {}
    for path, tree in _parsed():
        here = _module_name(path)
        graph[here] = set()
        # Function-local imports count too: they hide a cycle, they do not break it.
        for _, module, _ in _package_imports(path, tree):
            if module != here:
                graph[here].add(module)
    # Packages import their submodules; a submodule never imports its package's
    # __init__, so an edge into a package is an edge into its __init__ only.
    state = {}
    cycle = []

    def visit(module, stack):
        state[module] = "open"
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == "open":
                cycle.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycle, f"import cycles: {cycle}"


def test_no_underscored_name_imported_from_another_module():
    offenders = []
    for path, tree in _parsed():
        for node, module, name in _package_imports(path, tree):
            if name is not None and name.startswith("_"):
                offenders.append(f"{_module_name(path)} imports {module}.{name}")
    assert not offenders, offenders


def test_no_function_local_imports():
    offenders = []
    for path, tree in _parsed():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in top:
                continue
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            if node.level == 0 if isinstance(node, ast.ImportFrom) else True:
                if all(n.split(".")[0] in OPTIONAL_PACKAGES for n in names):
                    continue
            offenders.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert not offenders, f"function-local imports: {offenders}"


def test_no_source_file_over_the_line_limit():
    over = {}
    for path in _source_files():
        rel = path.relative_to(SOURCE).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in LARGE_FILES:
            over[rel] = lines
    assert not over, f"over {MAX_LINES} lines (split, or list with a reason): {over}"
    stale = [
        name
        for name in LARGE_FILES
        if not (SOURCE / name).exists()
        or len((SOURCE / name).read_text().splitlines()) <= MAX_LINES
    ]
    assert not stale, f"listed as large but not (remove from LARGE_FILES): {stale}"


def _package_classes():
    seen, stack = set(), list(_all_package_modules())
    for _, obj in inspect.getmembers(lapsample, inspect.isclass):
        stack.append(obj)
    while stack:
        cls = stack.pop()
        if cls in seen or not cls.__module__.startswith("lapsample"):
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
    return seen


def test_no_concrete_method_is_overridden():
    """Only abstract methods may be overridden (equinox's docs/pattern.md)."""
    offenders = []
    for cls in _package_classes():
        for name, value in vars(cls).items():
            if not callable(value) or name.startswith("__"):
                continue
            for base in cls.__mro__[1:]:
                if base is object or base is eqx.Module:
                    break
                if name in vars(base):
                    inherited = vars(base)[name]
                    if not getattr(inherited, "__isabstractmethod__", False):
                        offenders.append(
                            f"{cls.__qualname__}.{name} overrides concrete "
                            f"{base.__qualname__}.{name}"
                        )
                    break
    assert not offenders, offenders
