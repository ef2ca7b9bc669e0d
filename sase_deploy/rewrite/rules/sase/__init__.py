"""The SASE/SLIM group fusion's parts (the rule itself: `rules.sase_group`).

- `read`: graph readers (channel chunks, conv/linear layers with BN folded, Add trees);
- `branches`: one group's style MLP, mask CNN and mask Resize read back from the graph;
- `forms`: the three ways the G groups are aggregated, read into per-group masks and styles;
- `match`: the matcher (typed captures, declines, the SASE modulation signature);
- `emit`: the grouped convs and batched aggregation that replace the block.
"""
