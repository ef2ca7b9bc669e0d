"""The fusion pass driver: apply rule tuples, self-check every batch on ORT CPU, report.

For each rule in order: import the current model into onnx-graphsurgeon, collect the rule's
matches (and declines with reasons), rewrite them all, clean up, export, and run the result on
ORT CPU against the *original* model with seeded inputs. If the worst output differs by more
than `tolerance` (relative to the output's scale), each match is re-applied alone to find the
offending ones; those are reverted and reported, the rest kept. Graph input/output names and
shapes never change.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from sase_deploy.errors import UserError
from sase_deploy.graph_io import canonicalise, model_from_graph
from sase_deploy.rewrite.graph_utils import import_graph
from sase_deploy.rewrite.rule import Decline, Match, RewriteRule, match_and_check
from sase_deploy.rewrite.rules import DEFAULT_RULES
from sase_deploy.rewrite.self_check import NOISE_FLOOR_FACTOR, CheckResult, SelfChecker
from sase_deploy.vocabulary import StageCallback


@dataclass
class FuseResult:
    """The fused model and the JSON-able report (see README `fuse`)."""

    model: onnx.ModelProto
    report: dict[str, Any]


def _collect(rule: RewriteRule[Any], graph: Any) -> tuple[list[Match[Any]], list[Decline]]:
    """Matches (checked, non-overlapping, first wins) and declines of `rule` on `graph`."""
    matches: list[Match[Any]] = []
    declines: list[Decline] = []
    claimed: set[int] = set()
    for anchor in list(rule.candidates(graph)):
        result = match_and_check(rule, graph, anchor)
        if result is None:
            continue
        if isinstance(result, Decline):
            declines.append(result)
            continue
        ids = {id(n) for n in result.nodes}
        if ids & claimed:
            declines.append(Decline(rule.name, result.anchor, "overlaps an earlier match"))
            continue
        claimed |= ids
        matches.append(result)
    return matches, declines


def _apply(
    model: onnx.ModelProto, rule: RewriteRule[Any], anchors: set[str] | None
) -> tuple[onnx.ModelProto, list[Match[Any]], list[Decline], dict[str, str]]:
    """Apply `rule` to a fresh import of `model` (only at `anchors` when given).

    Returns the rewritten model, the matches applied, the declines, and rewrite errors by anchor.
    """
    graph = import_graph(model)
    matches, declines = _collect(rule, graph)
    if anchors is not None:
        matches = [m for m in matches if m.anchor in anchors]
    errors: dict[str, str] = {}
    for match in matches:
        try:
            rule.rewrite(graph, match)
        except Exception as exc:  # a rule bug must not kill the export: revert and report it
            errors[match.anchor] = f"rewrite raised {type(exc).__name__}: {exc}"
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return model_from_graph(graph, model), matches, declines, errors


def _verdict(
    check: SelfChecker,
    candidate: onnx.ModelProto,
    outputs: list[str],
    errors: dict[str, str],
    on_error: str | None,
) -> CheckResult:
    """`check(candidate, outputs)`; not run when a rewrite raised (failed, reason `on_error`)."""
    return CheckResult(False, reason=on_error) if errors else check(candidate, outputs)


def _rule_batch(
    model: onnx.ModelProto, rule: RewriteRule[Any], check: SelfChecker
) -> tuple[onnx.ModelProto, dict[str, Any], list[Match[Any]]]:
    """One rule over the whole graph with self-check and per-match fallback."""
    candidate, matches, declines, errors = _apply(model, rule, None)
    fused_by = _fused_inputs(model)
    status: dict[str, str] = {}
    reasons: dict[str, str] = {}
    stats: dict[str, float] = {}
    accepted = model
    if matches and all(m.captures.canonical for m in matches):
        status = {m.anchor: "unchanged" for m in matches}
    elif matches:
        outputs = {m.anchor: [m.block_output] if m.block_output else [] for m in matches}
        every = [name for names in outputs.values() for name in names]
        batch = _verdict(check, candidate, every, errors, "a rewrite raised")
        if batch.ok:
            accepted, good, stats = candidate, list(outputs), batch.stats
        else:
            accepted, good, stats = _isolate(model, rule, check, outputs, errors, batch, reasons)
        for match in matches:
            if match.anchor in good:
                status[match.anchor] = "unchanged" if match.captures.canonical else "applied"
            else:
                status[match.anchor] = "reverted"
    entry = {
        "rule": rule.name,
        "matches": [_match_entry(m, status, reasons) for m in matches],
        "declines": [_decline_entry(d, fused_by) for d in declines],
        "applied": sum(1 for s in status.values() if s == "applied"),
        "reverted": sum(1 for s in status.values() if s == "reverted"),
        "self_check": stats,
    }
    return accepted, entry, matches


def _fused_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the rule whose fused block feeds it (emitted nodes are named `rule/...`).

    A rule declining such a node is expected: it looked at what an earlier rule already wrote
    (e.g. the SE-gate rule at the Mul that applies a fused SASE block's modulation)."""
    prefixes = tuple(f"{r.name}/" for r in DEFAULT_RULES)
    producer = {out: node.name for node in model.graph.node for out in node.output}
    fed: dict[str, str] = {}
    for node in model.graph.node:
        for name in [node.name, *(producer.get(i, "") for i in node.input)]:
            if name.startswith(prefixes):
                fed[node.name] = name.split("/", 1)[0]
                break
    return fed


def _decline_entry(decline: Decline, fused_by: dict[str, str]) -> dict[str, Any]:
    """A decline for the report; `expected` names the earlier fusion it looked at, if any."""
    rule = fused_by.get(decline.anchor)
    expected = f"it looks at a {rule} block fused earlier" if rule is not None else None
    return {"anchor": decline.anchor, "reason": decline.reason, "expected": expected}


def _isolate(
    model: onnx.ModelProto,
    rule: RewriteRule[Any],
    check: SelfChecker,
    outputs: dict[str, list[str]],
    errors: dict[str, str],
    batch: CheckResult,
    reasons: dict[str, str],
) -> tuple[onnx.ModelProto, list[str], dict[str, float]]:
    """After a failed batch: each match re-applied alone from `model`; those that pass are kept
    together, or accumulated one at a time when they interact. Returns (the model with the kept
    matches, their anchors, the last passing check's stats); the others' reasons go to
    `reasons`."""
    good = []
    for anchor in outputs:
        if anchor in errors:
            reasons[anchor] = errors[anchor]
            continue
        alone, _, _, err = _apply(model, rule, {anchor})
        result = _verdict(check, alone, outputs[anchor], err, next(iter(err.values()), None))
        if result.ok:
            good.append(anchor)
        else:
            reasons[anchor] = result.reason or batch.reason or "self-check failed"
    if not good:
        return model, good, batch.stats
    together, _, _, err = _apply(model, rule, set(good))
    result = _verdict(check, together, [name for a in good for name in outputs[a]], err, None)
    if result.ok:
        return together, good, result.stats
    kept, stats = model, batch.stats
    for anchor in list(good):
        trial, _, _, err = _apply(kept, rule, {anchor})
        result = _verdict(check, trial, outputs[anchor], err, None)
        if result.ok:
            kept, stats = trial, result.stats
        else:
            good.remove(anchor)
            reasons[anchor] = result.reason or "self-check failed in combination"
    return kept, good, stats


def _match_entry(match: Match[Any], status: dict[str, str], reasons: dict[str, str]) -> dict:
    """A match as the report lists it: where, what, its status and the rule's scalars."""
    return {
        "anchor": match.anchor,
        "kind": match.kind,
        "block_output": match.block_output,
        "status": status.get(match.anchor, "applied"),
        **({"reason": reasons[match.anchor]} if match.anchor in reasons else {}),
        **match.captures.report(),
    }


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def fuse_model(
    model: onnx.ModelProto,
    *,
    rules: Sequence[RewriteRule[Any]] = DEFAULT_RULES,
    self_check: bool = True,
    as_functions: bool = False,
    tolerance: float = 1e-5,
    seed: int = 0,
    feed: dict[str, np.ndarray] | None = None,
    on_rule: StageCallback | None = None,
    canonical: bool = False,
) -> FuseResult:
    """Fuse SE-family blocks in `model` (not modified) and report what was done.

    `rules` is applied in order; `self_check` runs ORT CPU after every rule (`tolerance` is
    relative to each output's scale); `as_functions` wraps each fused block into a local
    function node of domain `sase_deploy`; `on_rule` is called with each rule's name (progress).
    The model is canonicalised first (`graph_io.canonicalise`: folded shapes and constants, so
    any exporter's graph reads alike) unless `canonical` says it already is; `nodes_before`
    and the self-check refer to the canonical form.
    """
    if not isinstance(model, onnx.ModelProto) or not model.graph.node:
        raise UserError("the model has no graph nodes; pass an ONNX model exported by sase-deploy")
    original = copy.deepcopy(model) if canonical else canonicalise(model)
    check = SelfChecker(original, self_check, tolerance, seed, dict(feed or {}))
    current = model_from_graph(import_graph(original), original)
    current, rule_entries, blocks, prefixes = _run_rules(current, rules, check, on_rule)
    functions_report: dict[str, Any] | None = None
    if as_functions:
        current, functions_report = _wrap_as_functions(current, blocks, prefixes, check)
    block_outputs = sorted(set(blocks) & check.original_tensors)  # keys: block_output names
    final = check(current, block_outputs)
    if not final.ok:  # every batch passed; only a bug could get here
        raise RuntimeError(f"fused model failed its final check: {final.reason}")
    counts = collections.Counter(blocks.values())
    report = {
        "blocks_found": dict(sorted(counts.items())),
        "nodes_before": len(original.graph.node),
        "nodes_after": len(current.graph.node),
        "ops_before": _op_counts(original),
        "ops_after": _op_counts(current),
        "rules": rule_entries,
        "self_check": _self_check_entry(check, final, self_check, tolerance, seed, block_outputs),
        "as_functions": functions_report,
    }
    return FuseResult(model=current, report=report)


def _run_rules(
    model: onnx.ModelProto,
    rules: Sequence[RewriteRule[Any]],
    check: SelfChecker,
    on_rule: StageCallback | None,
) -> tuple[onnx.ModelProto, list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """Apply `rules` in order (one self-checked batch each) to `model`.

    Returns the rewritten model, each rule's report entry, the kind of every block found (keyed
    by its block output, else `rule:anchor`; the first rule to report a block names it) and the
    node-name prefix of every block a rule rebuilt (keyed by its block output).
    """
    entries: list[dict[str, Any]] = []
    blocks: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for rule in rules:
        if on_rule is not None:
            on_rule(rule.name)
        model, entry, matches = _rule_batch(model, rule, check)
        entries.append(entry)
        applied = {m["anchor"] for m in entry["matches"] if m["status"] == "applied"}
        for match in matches:
            if match.kind is None:
                continue
            key = match.block_output or f"{match.rule}:{match.anchor}"
            blocks.setdefault(key, match.kind)
            if match.block_output and match.anchor in applied:  # rebuilt under this prefix
                prefixes.setdefault(match.block_output, f"{match.rule}/{match.anchor}/")
    return model, entries, blocks, prefixes


def _wrap_as_functions(
    model: onnx.ModelProto, blocks: dict[str, str], prefixes: dict[str, str], check: SelfChecker
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`model` with its blocks wrapped as function nodes (`functions`) when that passes `check`;
    else `model` unchanged. Returns the model and the report's `as_functions` entry."""
    from sase_deploy.rewrite.functions import wrap_blocks_as_functions

    wrapped, functions_report = wrap_blocks_as_functions(model, blocks, prefixes)
    wrapped_check = check(wrapped)
    if wrapped_check.ok:
        return wrapped, functions_report
    return model, {"error": wrapped_check.reason, "functions": {}}


def _self_check_entry(
    check: SelfChecker,
    final: CheckResult,
    enabled: bool,
    tolerance: float,
    seed: int,
    block_outputs: list[str],
) -> dict[str, Any]:
    """The report's `self_check` entry: settings, noise floors, and the final check's stats."""
    return {
        "enabled": enabled,
        "tolerance": tolerance,
        "block_tolerance": tolerance,
        "noise_floor": check.noise_floor,
        "noise_floor_factor": NOISE_FLOOR_FACTOR,
        "network_tolerance": check.network_tolerance,
        "blocks_checked": len(block_outputs),
        "seed": seed,
        "runs": check.checks,
        # below 1.0 the original overflows on the seeded inputs: only the finite part and
        # the positions of inf/nan are compared
        "reference_finite_fraction": check.finite_fraction,
        **final.stats,
    }
