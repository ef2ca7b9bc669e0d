"""The SPSE/RGSE pooling collapse's parts (the rule itself: `rules.spatial_pool`).

- `read`: the squeeze read back from the descriptor a ReLU reads (branches, pooling regions,
  constant terms, BatchNorm);
- `weights`: every branch's pooling subgraph probed on ORT, contracted with its depthwise conv
  into one H x W per-channel kernel, and that kernel verified against the original squeeze.
"""
