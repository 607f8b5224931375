"""Model name -> Task factory, and named configs.

Modules that define tasks call ``register(name, task_factory, configs)`` at import time. ``load_all()`` imports
the fixed list ``TASK_MODULES`` (each inside a try, so a module that is missing or broken does not take the
whole CLI down; the error is kept in ``IMPORT_ERRORS`` and reported when that model is asked for).

A task factory is ``factory(data, config) -> Task`` where ``data`` is whatever ``recsys_kernels.data.load_dataset``
returned for the --data argument and ``config`` is the merged config dict.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

MODELS: dict[str, Callable[[Any, dict], Any]] = {}
CONFIGS: dict[str, dict] = {}
# model name -> name of its default config in CONFIGS, and the names of all its configs
DEFAULT_CONFIG: dict[str, str] = {}
MODEL_CONFIGS: dict[str, list[str]] = {}
IMPORT_ERRORS: dict[str, str] = {}

# Models whose command line is owned by another module (``main(argv)``); the CLI hands over to it.
LLM_MODELS = frozenset({"tallrec", "collm", "llara", "allmrec"})
LLM_CLI_MODULE = "recsys_kernels.models.llm.cli"

TASK_MODULES = (
    "recsys_kernels.train.sequential_task",
    "recsys_kernels.train.ratings_task",
    "recsys_kernels.train.ctr_task",
    "recsys_kernels.train.quality_configs",  # after the modules it adds configs to
)

_loaded = False


def register(name: str, task_factory: Callable[[Any, dict], Any], configs: dict[str, dict] | None = None,
             default_config: str | None = None) -> None:
    """Register a model. ``configs`` maps config names to dicts; the default config is ``default_config`` or,
    if not given, the first entry of ``configs``."""
    MODELS[name] = task_factory
    for cname, cfg in (configs or {}).items():
        CONFIGS[cname] = dict(cfg)
        MODEL_CONFIGS.setdefault(name, [])
        if cname not in MODEL_CONFIGS[name]:
            MODEL_CONFIGS[name].append(cname)
    if default_config is not None:
        DEFAULT_CONFIG[name] = default_config
    elif configs:
        DEFAULT_CONFIG.setdefault(name, next(iter(configs)))


def load_all() -> None:
    """Import every module in TASK_MODULES once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in TASK_MODULES:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # keep the CLI alive for the other models
            IMPORT_ERRORS[mod] = f"{type(exc).__name__}: {exc}"
