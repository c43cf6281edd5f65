"""Load ``module:attr`` targets, telling a missing module from one that fails to import."""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import ConfigurationError
from ..service import Service

__all__ = ["load_object", "load_service"]


def load_service(target: str) -> Service:
    """The ``Service`` named by ``target`` (``package.module:attribute``)."""
    obj = load_object(target, "services.catalog:service")
    if not isinstance(obj, Service):
        raise ConfigurationError(f"{target!r} is a {type(obj).__name__}, not a choreo.Service")
    return obj


def load_object(target: str, example: str) -> object:
    """The object named by ``target`` (``package.module:attribute``); ``example`` is shown
    when ``target`` is not of that form."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{target!r}: expected MODULE:ATTRIBUTE, e.g. {example}")
    if os.getcwd() not in sys.path:  # a console script does not put the working directory first
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ConfigurationError(f"{target!r}: no module named {exc.name!r}") from exc
        raise ConfigurationError(f"{target!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"{target!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{target!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj
