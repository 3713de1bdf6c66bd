"""What a module says about itself: the config sections and data shape it can be rebuilt from.

Every :class:`~mimic_runner.training.modules.base.ExplainedClassifier` saves, as its Lightning
hyper-parameters, ``{"config": {"model", "backbone", "explain"}, "data": {...}}`` built here
from its own constructor arguments — whether the builders made it from a Hydra config or a
user called the class directly. :func:`~mimic_runner.training.checkpoint.load_checkpoint`
rebuilds the module from that alone. The factories (backbone, optimizer, scheduler) are
described as Hydra configs when they are ``functools.partial`` objects of importable callables
with plain keyword arguments (what Hydra's ``_partial_: true`` makes); anything else is listed
under ``"undescribed"`` and such a checkpoint cannot be rebuilt without its code.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Mapping
from typing import Any

# Constructor arguments that are factories, data shape, or come from other config sections.
FACTORY_ARGS = ("backbone", "optimizer", "scheduler")
DATA_ARGS = ("in_channels", "num_classes", "maps", "class_names", "image_size")
EXPLAIN_ARGS = {"explain_target": "target", "nss_variant": "nss_variant"}
BACKBONE_ARGS = ("explain_layer",)


class NotDescribable(ValueError):
    """A value that no plain config can hold (an object, a lambda, a tensor, ...)."""


def import_path(obj: Any) -> str:
    """The shortest dotted path that imports ``obj`` (a class or function): the first parent
    package of its module that exposes it (``torch.optim.Adam``, not
    ``torch.optim.adam.Adam``). :class:`NotDescribable` for a lambda or local object."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise NotDescribable(f"{obj!r} has no import path")
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        found = sys.modules.get(".".join(parts[:i]))
        for name in qualname.split("."):
            found = getattr(found, name, None) if found is not None else None
        if found is obj:
            return f"{'.'.join(parts[:i])}.{qualname}"
    raise NotDescribable(f"{obj!r} cannot be imported as {module}.{qualname}")


def plain(value: Any) -> Any:
    """``value`` as config data (None, bool, int, float, str, lists, str-keyed dicts): tuples
    become lists, dataclasses dicts; :class:`NotDescribable` for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise NotDescribable(f"{value!r}: keys must be strings")
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise NotDescribable(f"{type(value).__name__} value {value!r}")


def factory_config(factory: Any, partial: bool = True) -> dict[str, Any] | None:
    """The Hydra config that rebuilds ``factory``: ``{"_target_": path, "_partial_": True,
    **keywords}`` for a ``functools.partial`` of an importable callable (None stays None).
    ``partial=False`` leaves out ``_partial_`` (the backbone's section, made partial by the
    builders). :class:`NotDescribable` otherwise."""
    if factory is None:
        return None
    if isinstance(factory, functools.partial):
        if factory.args:
            raise NotDescribable("positional arguments in a partial")
        func, keywords = factory.func, dict(factory.keywords)
    elif callable(factory):
        func, keywords = factory, {}
    else:
        raise NotDescribable(f"{factory!r} is not a factory")
    head: dict[str, Any] = {"_target_": import_path(func)}
    if partial:
        head["_partial_"] = True
    return {**head, **plain(keywords)}


def describe_module(cls: type, args: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a module of class ``cls`` built with constructor arguments ``args``
    saves: ``config`` (``model``: ``_target_`` plus every argument that is not data shape,
    explanation or backbone; ``backbone``: the backbone factory's config and
    ``explain_layer``; ``explain``: ``target`` and ``nss_variant``), ``data`` (channels,
    classes, maps, class names, image size) and, when some argument has no config form,
    ``undescribed`` (their names: such a checkpoint cannot be rebuilt from the file alone)."""
    undescribed: list[str] = []

    def attempt(name: str, make: Any, *a: Any, **kw: Any) -> Any:
        try:
            return make(*a, **kw)
        except NotDescribable:
            undescribed.append(name)
            return None

    model: dict[str, Any] = {"_target_": attempt("model._target_", import_path, cls)}
    skip = {*DATA_ARGS, *EXPLAIN_ARGS, *BACKBONE_ARGS, "backbone"}
    for key, value in args.items():
        if key in ("optimizer", "scheduler"):
            model[key] = attempt(f"model.{key}", factory_config, value)
        elif key not in skip:
            model[key] = attempt(f"model.{key}", plain, value)
    backbone = attempt("backbone", factory_config, args.get("backbone"), partial=False) or {}
    backbone.update({k: args[k] for k in BACKBONE_ARGS if k in args})
    explain = {section_key: args[k] for k, section_key in EXPLAIN_ARGS.items() if k in args}
    image_size = args.get("image_size")
    data = {"in_channels": int(args["in_channels"]), "num_classes": int(args["num_classes"]),
            "maps": tuple(args.get("maps") or ()),
            "class_names": tuple(args.get("class_names") or ()),
            "image_size": None if image_size is None else tuple(image_size)}
    out: dict[str, Any] = {"config": {"model": model, "backbone": backbone, "explain": explain},
                           "data": data}
    if undescribed:
        out["undescribed"] = undescribed
    return out
