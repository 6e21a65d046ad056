"""Every public function, method and class of eelsanom has a numpydoc docstring.

Walks every public module under :mod:`eelsanom` (modules whose dotted name has
a component starting with ``_`` are skipped) and checks, for every public
function and class *defined in that module* (``obj.__module__`` is the module),
and every public method defined in such a class itself (dunders excluded):

- there is a docstring (a dataclass's generated ``Name(field, ...)`` text does
  not count);
- a function or method with parameters besides ``self``/``cls`` has a
  ``Parameters`` section that names each parameter (``*args``/``**kwargs`` may
  be written with or without stars, or as ``**kw``/``**kwargs``);
- a function or method whose return annotation is not ``None`` has a
  ``Returns`` or ``Yields`` section;
- a class whose own ``__init__`` (hand-written or dataclass-generated) takes
  parameters names each one in a ``Parameters`` or ``Attributes`` section.

Run ``python -m tests.test_docstrings`` to print what each module misses.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys

import pytest

import eelsanom

# argparse command handlers take the parsed ``argparse.Namespace`` and return an
# exit code; their user documentation is the ``--help`` text built in the
# parser, so they need a docstring but not Parameters/Returns sections.
EXEMPT_SECTIONS = {"eelsanom.cli": re.compile(r"^(cmd_\w+|main)$")}

_SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}\s*$", re.MULTILINE)


def public_modules() -> list[str]:
    """Dotted names of eelsanom and its public submodules, sorted."""
    names = {eelsanom.__name__}
    for info in pkgutil.walk_packages(eelsanom.__path__, prefix="eelsanom."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.add(info.name)
    return sorted(names)


def _sections(doc: str) -> dict[str, str]:
    """Map numpydoc section titles of a cleaned docstring to their bodies."""
    out: dict[str, str] = {}
    heads = list(_SECTION.finditer(doc))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(doc)
        out[m.group(1).strip()] = doc[m.end():end]
    return out


def _entry_names(body: str) -> set[str]:
    """Names of the entries (un-indented ``name : type`` lines) of a section body."""
    names: set[str] = set()
    for line in body.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        for name in line.split(" : ")[0].split(","):
            name = name.strip()
            if name:
                names.add(name)
    return names


def _documented(param: inspect.Parameter, names: set[str]) -> bool:
    """Whether ``param`` is named among the section entries ``names``."""
    if param.kind is inspect.Parameter.VAR_POSITIONAL:
        allowed = {param.name, "*" + param.name, "*args"}
    elif param.kind is inspect.Parameter.VAR_KEYWORD:
        allowed = {param.name, "**" + param.name, "**kw", "**kwargs"}
    else:
        allowed = {param.name}
    return bool(allowed & names)


def _doc(obj: object) -> str:
    """Cleaned docstring of ``obj`` ("" when none, or a dataclass's generated one)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc:
        return ""
    if isinstance(obj, type) and doc.startswith(obj.__name__ + "("):
        return ""  # dataclass-generated signature, not documentation
    return inspect.cleandoc(doc)


def _params(func) -> list[inspect.Parameter]:
    """Parameters of ``func`` other than ``self``/``cls``."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _returns_value(func) -> bool:
    """Whether ``func``'s return annotation is present and not ``None``."""
    try:
        ann = inspect.signature(func).return_annotation
    except (TypeError, ValueError):
        return False
    return ann not in (inspect.Signature.empty, None, "None")


def _check_function(qual: str, func, problems: list[str], sections: bool = True) -> None:
    doc = _doc(func)
    if not doc:
        problems.append(f"{qual}: no docstring")
        return
    if not sections:
        return
    secs = _sections(doc)
    params = _params(func)
    if params:
        if "Parameters" not in secs:
            problems.append(f"{qual}: no Parameters section")
        else:
            names = _entry_names(secs["Parameters"])
            missing = [p.name for p in params if not _documented(p, names)]
            if missing:
                problems.append(f"{qual}: Parameters does not name {', '.join(missing)}")
    if _returns_value(func) and not ({"Returns", "Yields"} & set(secs)):
        problems.append(f"{qual}: no Returns/Yields section")


def _check_class(qual: str, cls: type, problems: list[str]) -> None:
    doc = _doc(cls)
    if not doc:
        problems.append(f"{qual}: no docstring")
    else:
        init = cls.__dict__.get("__init__")
        params = _params(init) if inspect.isfunction(init) else []
        params = [p for p in params if not p.name.startswith("_")]  # private fields
        if params:
            secs = _sections(doc)
            names = _entry_names(secs.get("Parameters", "")) | _entry_names(
                secs.get("Attributes", ""))
            missing = [p.name for p in params if not _documented(p, names)]
            if missing:
                problems.append(
                    f"{qual}: Parameters/Attributes does not name {', '.join(missing)}")
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        mqual = f"{qual}.{name}"
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if isinstance(attr, property):
            if not _doc(attr):
                problems.append(f"{mqual}: no docstring")
        elif inspect.isfunction(attr):
            _check_function(mqual, attr, problems)


def module_problems(modname: str) -> list[str]:
    """Every docstring shortcoming of the public objects defined in ``modname``."""
    mod = importlib.import_module(modname)
    exempt = EXEMPT_SECTIONS.get(modname)
    problems: list[str] = []
    if not _doc(mod):
        problems.append(f"{modname}: no module docstring")
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != modname:
            continue
        qual = f"{modname}.{name}"
        if inspect.isclass(obj):
            _check_class(qual, obj, problems)
        elif inspect.isfunction(obj):
            _check_function(qual, obj, problems,
                            sections=not (exempt and exempt.match(name)))
    return problems


@pytest.mark.parametrize("modname", public_modules())
def test_public_docstrings(modname):
    try:
        importlib.import_module(modname)
    except ImportError as exc:  # an optional dependency (napari, dask.distributed, ...)
        pytest.skip(f"{modname} cannot be imported here: {exc}")
    problems = module_problems(modname)
    assert not problems, f"{len(problems)} docstring problem(s):\n" + "\n".join(problems)


def test_checker_catches_missing_sections():
    """The checker itself flags what it should (so the test above can fail)."""

    def bare(x: int, *args, **kwargs) -> int:
        """Only a summary."""
        return x

    def good(x: int, *args, **kw) -> int:
        """Summary.

        Parameters
        ----------
        x : int
            A value.
        *args, **kw
            Passed on.

        Returns
        -------
        int
            ``x``.
        """
        return x

    problems: list[str] = []
    _check_function("bare", bare, problems)
    assert problems == ["bare: no Parameters section", "bare: no Returns/Yields section"]
    problems = []
    _check_function("good", good, problems)
    assert problems == []


def test_checker_catches_undocumented_classes():
    """A dataclass's generated docstring does not count; every field must be named."""
    from dataclasses import dataclass

    @dataclass
    class Bare:
        a: int

    @dataclass
    class Partial:
        """Summary.

        Attributes
        ----------
        a : int
            Documented.
        """

        a: int
        b: float = 0.0
        _private: object = None

    problems: list[str] = []
    _check_class("Bare", Bare, problems)
    assert problems == ["Bare: no docstring"]
    problems = []
    _check_class("Partial", Partial, problems)
    assert problems == ["Partial: Parameters/Attributes does not name b"]


if __name__ == "__main__":  # pragma: no cover - reporting helper
    wanted = sys.argv[1:] or public_modules()
    for m in wanted:
        found = module_problems(m)
        print(f"{m}: {len(found)}")
        for p in found:
            print("    " + p)
