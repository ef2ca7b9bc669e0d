"""The whole flow in one call: `deploy` (export -> fuse -> FP16/INT8 -> engines -> report)."""
