"""The rule sets: explicit tuples, applied in order.

Order matters: part B's SPSE/RGSE pooling collapse and SASE/SLIM group fusion run first (they
name the kinds of the blocks they touch: the first rule to report a block names it), then the
SE-gate canonicalisation brings every remaining channel gate to one form, and cleanup merges what
the rewrites left duplicated.
"""

from __future__ import annotations

from typing import Any

from sase_deploy.rewrite.rule import RewriteRule
from sase_deploy.rewrite.rules.cleanup import Cleanup
from sase_deploy.rewrite.rules.sase_group import SaseGroupFusion
from sase_deploy.rewrite.rules.se_gate import SeGateCanonicalise
from sase_deploy.rewrite.rules.spatial_pool import SpatialPoolCollapse

SE_GATE_RULES: tuple[RewriteRule[Any], ...] = (SeGateCanonicalise(), Cleanup())
DEFAULT_RULES: tuple[RewriteRule[Any], ...] = (
    SpatialPoolCollapse(),
    SaseGroupFusion(),
    SeGateCanonicalise(),
    Cleanup(),
)
CLEANUP_RULES: tuple[RewriteRule[Any], ...] = (Cleanup(),)

__all__ = ["CLEANUP_RULES", "DEFAULT_RULES", "SE_GATE_RULES"]
