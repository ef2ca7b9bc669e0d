"""The text of a model's `config.pbtxt`: protobuf text format of Triton's ModelConfig.

Written by hand (deterministic, no tritonclient at run time); the tests parse it with Triton's
own protobuf schema (`tritonclient.grpc.model_config_pb2`).
"""

from __future__ import annotations

from sase_deploy import __version__
from sase_deploy.serving.model import TritonModel, TritonTensor

MAX_QUEUE_DELAY_US = 100


def _quote(text: str) -> str:
    """A protobuf text-format string: printable ASCII as is, other UTF-8 bytes octal-escaped."""
    escaped = (
        "\\" + chr(b) if chr(b) in '"\\' else chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}"
        for b in text.encode("utf-8")
    )
    return '"' + "".join(escaped) + '"'


def _tensor_block(tensor: TritonTensor) -> str:
    # Triton wants at least one dim: a scalar (or a batch-only tensor) is [1] reshaped to [].
    dims = ", ".join(str(d) for d in tensor.dims) if tensor.dims else "1"
    lines = ["  {", f"    name: {_quote(tensor.name)}", f"    data_type: {tensor.data_type}"]
    lines.append(f"    dims: [ {dims} ]")
    if not tensor.dims:
        lines.append("    reshape { shape: [ ] }")
    return "\n".join([*lines, "  }"])


def config_pbtxt(model: TritonModel) -> str:
    """The `config.pbtxt` of `model` (protobuf text format of Triton's ModelConfig).

    Holds name, platform, max_batch_size, the inputs and outputs, `dynamic_batching` (preferred
    sizes, 100 µs queue delay) when max_batch_size > 0, and `instance_group` KIND_GPU count 1
    for engines. ONNX models get no instance_group: Triton's default then places one instance
    on each GPU, or on the CPU where the server has none.
    """
    source = model.source_onnx
    read_from = f" (I/O from {source.name})" if source and source != model.artifact else ""
    lines = [
        f"# sase-deploy {__version__}: {model.artifact.name}{read_from}",
        f"name: {_quote(model.name)}",
        f"platform: {_quote(model.platform)}",
        f"max_batch_size: {model.max_batch_size}",
    ]
    for key, tensors in (("input", model.inputs), ("output", model.outputs)):
        lines += [f"{key} [", ",\n".join(_tensor_block(t) for t in tensors), "]"]
    if model.max_batch_size > 0:
        lines.append("dynamic_batching {")
        if model.preferred_batch_sizes:
            sizes = ", ".join(str(s) for s in model.preferred_batch_sizes)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines += [f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}", "}"]
    if model.instance_kind:
        lines += ["instance_group [", f"  {{ kind: {model.instance_kind} count: 1 }}", "]"]
    return "\n".join(lines) + "\n"
