"""The abstract-or-final rule (STYLE.md, rule 1) for every public class."""

import abc
import dataclasses
import inspect

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
