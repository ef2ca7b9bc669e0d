"""Reference PyTorch implementations of the SE-family blocks and networks, and their registry."""
