"""Thin recommender models built only on recsys_kernels.ops and recsys_kernels.nn.

Imported as ``recsys_kernels.models``. The models issue fills this package (PMF, SASRec, BERT4Rec, GRU4Rec,
HSTU, DLRM, DQRM and the LLM-based recommenders).
"""
