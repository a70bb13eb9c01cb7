"""Loading a scenario group's own agent class (``behaviour = "module:Class"``) for a simulation.

- The module is looked for where Python would look when running a script from the current
  folder: the current folder comes first, even under the ``tollmesh`` command (whose own
  ``sys.path`` starts with the folder of the script, not the current one).
- A module of your own (one not installed in site-packages) travels to the hosts by value
  (``cloudpickle.register_pickle_by_value``): the hosts never import it, so they need no path
  to it (on any node of a cluster) and never run its top-level code again.
- A module that fails on import is named with the exception and where it was raised.
- Top-level code of a behaviour module that starts a simulation (no
  ``if __name__ == "__main__":`` guard) is refused with an error saying so, instead of a
  second run nested in the first, or one more in every host.

>>> load_behaviour("mesh.sim_agents:SimAgent").__name__
'SimAgent'
>>> load_behaviour("no_such_module_here:Auditor")
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: behaviour='no_such_module_here:Auditor': cannot be imported: no module named 'no_such_module_here' (looked in the current folder ... and sys.path)
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

from mesh.core.errors import ConfigError

_importing = threading.local()  # the behaviour spec being imported on this thread, if any
_OWN_PACKAGES = ("mesh", "actors", "ledger")


def load_behaviour(spec: str) -> type:
    """The :class:`~mesh.sim_agents.SimAgent` subclass ``"package.module:Class"`` names (see the module doc)."""
    from mesh.sim_agents import SimAgent

    return load_class(spec, SimAgent)


def load_class(spec: str, base: type, *, field: str = "behaviour") -> type:
    """The subclass of ``base`` that ``"package.module:Class"`` names, found as behaviours are (see the module doc);
    ConfigError naming ``field`` and what is wrong. Its module's classes travel to the hosts by value."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{field}={spec!r}: must be package.module:Class")
    module = _import(spec, module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{_cannot(spec, module_name)} ({_where(module)}) has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{field}={spec!r}: must name a subclass of mesh.{base.__name__}, got {cls!r}")
    ship_by_value(module)
    return cls


def refuse_nested_run() -> None:
    """Raise if a simulation is started while a behaviour module is imported, or inside a Ray worker:
    the module's top-level code runs a simulation that belongs under ``if __name__ == "__main__":``."""
    spec = getattr(_importing, "spec", None)
    if spec is not None:
        raise ConfigError(f"behaviour={spec!r}: importing its module starts a simulation: put that code under "
                          "`if __name__ == \"__main__\":` so that importing the module only defines the agents")
    if _in_ray_worker():
        raise ConfigError("a simulation was started inside a Ray worker (a host importing an agent module whose "
                          "top-level code runs one?): put that code under `if __name__ == \"__main__\":`")


def ship_by_value(module: object) -> None:
    """Have cloudpickle send ``module``'s classes by value, unless it is installed (site-packages) or ours."""
    from ray import cloudpickle

    name = getattr(module, "__name__", "")
    if name == "__main__" or name.split(".")[0] in _OWN_PACKAGES:
        return  # __main__ goes by value anyway; tollmesh's own modules are importable everywhere
    path = getattr(module, "__file__", None)
    if path is None or any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
        return
    cloudpickle.register_pickle_by_value(module)


def _import(spec: str, module_name: str) -> object:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)  # as `python script.py` run from here would find it
    previous, _importing.spec = getattr(_importing, "spec", None), spec
    try:
        return importlib.import_module(module_name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"behaviour={spec!r}: cannot be imported: no module named {exc.name!r} "
                              f"(looked in the current folder {here} and sys.path)") from None
        raise ConfigError(f"{_cannot(spec, module_name)} raised {_described(exc)}") from None
    except Exception as exc:  # the module's own code raised (or does not compile): say what and where
        raise ConfigError(f"{_cannot(spec, module_name)} raised {_described(exc)}") from None
    finally:
        _importing.spec = previous


def _cannot(spec: str, module_name: str) -> str:
    return f"behaviour={spec!r}: cannot be imported: module {module_name!r}"


def _described(exc: BaseException) -> str:
    where = _raised_at(exc)
    return f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")


def _raised_at(exc: BaseException) -> Optional[str]:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _where(module: object) -> str:
    return getattr(module, "__file__", None) or "a namespace package"


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # Ray not importable or its context not readable: not a worker of ours
        return False
