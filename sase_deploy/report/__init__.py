"""Accuracy and latency comparisons between engines."""

from sase_deploy.report.compare import OutputDiff, compare_outputs

__all__ = ["OutputDiff", "compare_outputs"]
