"""Accuracy and latency comparisons between engines (output differences: `sase_deploy.runtime`)."""
