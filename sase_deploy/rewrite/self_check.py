"""The fusion pass's numerical self-check: run the original and each rewritten graph on ORT CPU
with the same seeded inputs and judge the difference against the original's own noise floor.

`SelfChecker` measures the noise floor of the network's outputs (and of each rewritten block's
output) once, then answers every candidate graph with a `CheckResult`. The pass driver
(`sase_deploy.rewrite.passes`) decides what to keep and revert from those results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from sase_deploy.errors import UserError, first_line
from sase_deploy.graph_io import random_feed, real_inputs
from sase_deploy.runtime.compare import compare_outputs, worst_relative

_NP_DTYPES: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def self_check_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: standard normal floats, zeros otherwise.

    Dynamic or unknown dims become 1.
    """
    inputs = []
    for value in real_inputs(model):
        ttype = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in ttype.shape.dim
        ]
        dtype = _NP_DTYPES.get(ttype.elem_type)
        if dtype is None:
            raise UserError(
                f"input '{value.name}' has an unsupported element type {ttype.elem_type}; "
                "fuse models with float/int inputs"
            )
        inputs.append((value.name, dims, dtype))
    return random_feed(inputs, np.random.default_rng(seed))


# The network outputs may differ by this many times the original's own float noise floor.
NOISE_FLOOR_FACTOR = 2.0


def _run(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    extra_outputs: Sequence[str] = (),
    optimization: str = "basic",
) -> dict[str, np.ndarray]:
    """Run on ORT CPU, also returning the intermediate tensors `extra_outputs`.

    Only basic graph optimisations: compare what the graphs compute, not what ORT fuses.
    The extra outputs are appended to `model` for the run and removed again.
    """
    from sase_deploy.runtime.ort import OrtRunner

    declared = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs)
    try:
        with OrtRunner(model, intra_op_threads=1, optimization=optimization) as runner:
            return runner.infer(feed)
    finally:
        del model.graph.output[declared:]


def _node_outputs(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output if name}


def _io_signature(model: onnx.ModelProto) -> list[tuple[str, int, tuple[Any, ...] | None]]:
    """(name, element type, dims or None) of every graph input and output."""
    signature = []
    for prefix, group in (("in:", real_inputs(model)), ("out:", list(model.graph.output))):
        for value in group:
            ttype = value.type.tensor_type
            dims = (
                tuple(d.dim_value or d.dim_param for d in ttype.shape.dim)
                if ttype.HasField("shape")
                else None
            )
            signature.append((prefix + value.name, ttype.elem_type, dims))
    return signature


def _io_kept(original: list[Any], candidate: list[Any]) -> bool:
    """Same names and types; same dims wherever the original declares them."""
    if len(original) != len(candidate):
        return False
    return all(
        o[:2] == c[:2] and (o[2] is None or o[2] == c[2])
        for o, c in zip(original, candidate, strict=True)
    )


@dataclass(frozen=True)
class CheckResult:
    """One self-check verdict: `ok`, the differences measured (`max_abs_diff`, `max_rel_diff`,
    `max_block_rel_diff`; empty when the candidate was not run) and, when not ok, why."""

    ok: bool
    stats: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class SelfChecker:
    """Runs candidates against the original model: each rewritten block's output, and the
    network outputs (see README `fuse`, "Self-check").

    The network outputs must match at `network_tolerance` = max(`tolerance`,
    NOISE_FLOOR_FACTOR x noise floor), where the noise floor is how far the original differs
    from itself when ORT runs it with all graph optimisations instead of basic ones (other
    kernels, other summation order). Deep, chaotic generators amplify float reassociation far
    beyond 1e-5; the floor measures that per model. Each rewritten block's output is judged the
    same way against its own floor (`block_tolerance`), so the verdict is a property of the
    rewrite on this CPU's kernels, not of a float32 tolerance tuned on another CPU.
    """

    original: onnx.ModelProto
    enabled: bool
    tolerance: float
    seed: int
    feed: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    block_reference: dict[str, np.ndarray] = field(default_factory=dict)
    checks: int = 0
    noise_floor: float = 0.0
    block_floor: dict[str, float] = field(default_factory=dict)
    worst_block: float = 0.0

    def __post_init__(self) -> None:
        self.signature = _io_signature(self.original)
        try:  # a model that already fails the checker (e.g. contrib ops) is judged by ORT alone
            onnx.checker.check_model(self.original)
            self.use_checker = True
        except onnx.checker.ValidationError:
            self.use_checker = False
        if self.enabled:
            self.feed = self.feed or self_check_feed(self.original, self.seed)
            try:
                self.reference = _run(self.original, self.feed)
            except Exception as exc:  # any ORT failure means the same to the user
                raise UserError(
                    f"the input model does not run on ONNX Runtime CPU ({first_line(exc)}); "
                    "fix the model or pass --no-self-check"
                ) from exc
            self.noise_floor = self._measure_noise_floor()
        self.original_tensors = _node_outputs(self.original)

    def _measure_noise_floor(self) -> float:
        """The original against itself under ORT's full graph optimisations (scale-relative)."""
        try:
            other = _run(self.original, self.feed, optimization="all")
        except Exception:  # no optimised run, no floor: the plain tolerance applies
            return 0.0
        if _non_finite_mismatch(self.reference, other) is not None:
            return 0.0
        floor = worst_relative(compare_outputs(*_finite_parts(self.reference, other)))
        return floor if np.isfinite(floor) else 0.0

    @property
    def network_tolerance(self) -> float:
        return max(self.tolerance, NOISE_FLOOR_FACTOR * self.noise_floor)

    def block_tolerance(self, name: str) -> float:
        return max(self.tolerance, NOISE_FLOOR_FACTOR * self.block_floor.get(name, 0.0))

    def _measure_block_floors(self, names: Sequence[str]) -> None:
        """Each block output of the original against itself under full optimisation."""
        try:
            other = _run(self.original, self.feed, names, optimization="all")
        except Exception:  # no optimised run, no floor: the plain tolerance applies
            return
        for name in names:
            ref, got = {name: self.block_reference[name]}, {name: other[name]}
            if _non_finite_mismatch(ref, got) is None:
                floor = worst_relative(compare_outputs(*_finite_parts(ref, got)))
                self.block_floor[name] = floor if np.isfinite(floor) else 0.0

    @property
    def finite_fraction(self) -> float | None:
        """Share of the original's outputs that are finite (what the self-check can compare)."""
        if not self.reference:
            return None
        total = sum(r.size for r in self.reference.values())
        finite = sum(int(np.isfinite(r).sum()) for r in self.reference.values())
        return finite / max(total, 1)

    def __call__(
        self, candidate: onnx.ModelProto, block_outputs: Sequence[str] = ()
    ) -> CheckResult:
        """Judge `candidate`; `block_outputs` are the tensors holding the rewritten blocks'
        results (checked where both graphs have them)."""
        if not _io_kept(self.signature, _io_signature(candidate)):
            why = "the rewrite changed graph input/output names or shapes"
            return CheckResult(False, reason=why)
        try:
            if self.use_checker:
                onnx.checker.check_model(candidate)
        except onnx.checker.ValidationError as exc:
            return CheckResult(False, reason=f"onnx.checker failed: {first_line(exc)}")
        if not self.enabled:
            return CheckResult(True)
        self.checks += 1
        graph_outputs = {o.name for o in self.original.graph.output}
        blocks = sorted(
            set(block_outputs) & self.original_tensors & _node_outputs(candidate) - graph_outputs
        )
        missing = [name for name in blocks if name not in self.block_reference]
        if missing:
            ran = _run(self.original, self.feed, missing)
            self.block_reference.update({name: ran[name] for name in missing})
            self._measure_block_floors(missing)
        try:
            got = _run(candidate, self.feed, blocks)
        except Exception as exc:  # a graph ORT rejects is reverted, not fatal
            return CheckResult(
                False, reason=f"ORT failed on the rewritten graph: {first_line(exc)}"
            )
        block_ref = {name: self.block_reference[name] for name in blocks}
        block_got = {name: got.pop(name) for name in blocks}
        mismatch = _non_finite_mismatch(self.reference, got) or _non_finite_mismatch(
            block_ref, block_got
        )
        if mismatch is not None:
            return CheckResult(False, reason=mismatch)
        return self._judge(got, block_ref, block_got)

    def _judge(
        self,
        got: dict[str, np.ndarray],
        block_ref: dict[str, np.ndarray],
        block_got: dict[str, np.ndarray],
    ) -> CheckResult:
        """The finite outputs against the tolerances: blocks first, then the network."""
        diffs = compare_outputs(*_finite_parts(self.reference, got))
        block_diffs = compare_outputs(*_finite_parts(block_ref, block_got)) if block_ref else []
        stats = {
            "max_abs_diff": max((d.max_abs for d in diffs), default=0.0),
            "max_rel_diff": worst_relative(diffs),
            "max_block_rel_diff": worst_relative(block_diffs),
        }
        over = [d for d in block_diffs if d.rel_max_abs > self.block_tolerance(d.name)]
        worst = max(over, key=lambda d: d.rel_max_abs, default=None)
        if worst is not None:
            return CheckResult(
                False,
                stats,
                f"self-check: block output '{worst.name}' differs by "
                f"{worst.rel_max_abs:.2e} of its scale (tolerance "
                f"{self.block_tolerance(worst.name):.1e})",
            )
        if stats["max_rel_diff"] > self.network_tolerance:
            return CheckResult(
                False,
                stats,
                f"self-check: outputs differ by {stats['max_rel_diff']:.2e} of their scale "
                f"(tolerance {self.network_tolerance:.1e} = max({self.tolerance:.0e}, "
                f"{NOISE_FLOOR_FACTOR:g} x noise floor {self.noise_floor:.1e}))",
            )
        self.worst_block = max(self.worst_block, stats["max_block_rel_diff"])
        return CheckResult(True, stats)


def _non_finite_mismatch(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """Where the original itself overflows, the rewrite must overflow at the same places."""
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            return f"self-check: output '{name}' is missing or changed shape"
        bad_r, bad_g = ~np.isfinite(r), ~np.isfinite(g)
        if not np.array_equal(bad_r, bad_g) or not np.array_equal(
            np.nan_to_num(r[bad_r]), np.nan_to_num(g[bad_g])
        ):
            return f"self-check: output '{name}' has non-finite values in other places"
    return None


def _finite_parts(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both output sets with non-finite entries (equal in both, checked before) zeroed."""
    clean_ref, clean_got = {}, {}
    for name, r in ref.items():
        mask = np.isfinite(r)
        clean_ref[name] = np.where(mask, r, 0).astype(r.dtype)
        clean_got[name] = np.where(mask, got[name], 0).astype(r.dtype)
    return clean_ref, clean_got
