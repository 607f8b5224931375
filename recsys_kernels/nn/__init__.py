"""Modules built on recsys_kernels.ops."""

from recsys_kernels.nn.embedding_config import EmbeddingBagConfig
from recsys_kernels.nn.fused_embedding_bag import FusedEmbeddingBagCollection
from recsys_kernels.nn.hstu import HSTUAttention
from recsys_kernels.nn.interaction import DotInteraction
from recsys_kernels.nn.quantized_embedding_bag import Int4EmbeddingBagCollection, QATEmbeddingBagCollection

__all__ = ["DotInteraction", "EmbeddingBagConfig", "FusedEmbeddingBagCollection", "Int4EmbeddingBagCollection",
           "QATEmbeddingBagCollection", "HSTUAttention"]
