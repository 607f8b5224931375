"""Feature-interaction modules."""

from __future__ import annotations

import torch

from recsys_kernels.ops import dot_interaction
from recsys_kernels.reference.dot_interaction import LAYOUTS, output_columns


class DotInteraction(torch.nn.Module):
    """DLRM dot interaction: dense (B, D), sparse (B, F, D) -> (B, D + P [+ pad]).

    ``layout="lower"`` matches dlrm / NVIDIA DLRM, ``"upper"`` matches torchrec's InteractionArch;
    see recsys_kernels.ops.dot_interaction.
    """

    def __init__(self, self_interaction: bool = False, layout: str = "lower", pad_to_multiple: int = 1):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'lower' or 'upper', got {layout!r}")
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.self_interaction, self.layout, self.pad_to_multiple = self_interaction, layout, pad_to_multiple

    def output_dim(self, num_sparse_features: int, embedding_dim: int) -> int:
        """Width of the output row for F sparse features of dimension D (the top MLP's input)."""
        return output_columns(embedding_dim, num_sparse_features + 1, self.self_interaction, self.pad_to_multiple)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return dot_interaction(dense, sparse, self_interaction=self.self_interaction, layout=self.layout,
                               pad_to_multiple=self.pad_to_multiple)

    def extra_repr(self) -> str:
        return f"self_interaction={self.self_interaction}, layout={self.layout!r}, pad_to_multiple={self.pad_to_multiple}"
