"""The references are Gaudi's path, so they must export at static shapes (DESIGN.md): no aten op whose output
shape or control flow depends on tensor values. One check for every op's test."""

from __future__ import annotations

import torch

__all__ = ["DATA_DEPENDENT", "data_dependent_ops", "assert_exports_static"]

# aten ops whose output shape or control flow depends on data (Gaudi recompiles or falls back to the host)
DATA_DEPENDENT = {"nonzero", "unique", "_unique", "_unique2", "unique_consecutive", "masked_select",
                  "_local_scalar_dense", "item", "bincount", "repeat_interleave"}


def _data_dependent(target: str) -> bool:
    parts = target.split(".")
    if parts[0] != "aten" or len(parts) < 2:
        return False  # python builtins such as getitem (tuple outputs) are not ops
    return parts[1] in DATA_DEPENDENT or target == "aten.where.default"  # one-argument where is nonzero


def data_dependent_ops(graph: torch.fx.Graph) -> list[str]:
    """The data-dependent aten calls of an exported graph, in order."""
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and _data_dependent(str(n.target))]


def assert_exports_static(module: torch.nn.Module, args: tuple) -> None:
    """torch.export the module on args and fail naming any data-dependent op in its graph."""
    bad = data_dependent_ops(torch.export.export(module, args).graph)
    assert not bad, f"data-dependent ops in the reference: {bad}"
