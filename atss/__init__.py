"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020, arXiv:1912.02424)."""
