"""SE/SASE subgraph recognition and fusion on ONNX graphs (onnx-graphsurgeon)."""
