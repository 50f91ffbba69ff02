"""Seedable noise for ONNX models: every ``RandomNormalLike`` node becomes a graph input.

onnxruntime draws ``RandomNormalLike`` from a generator that lives in the session and advances
with every run, seeded once when the session is built (``onnxruntime.set_seed`` is process-wide
and applies to sessions built after it). A warm session shared by concurrent jobs can therefore
not give "same seed, same audio". Rewriting the graph so that each such node takes its values
from an input (``noise_<k>``, a flat float32 buffer at least as long as the tensor it replaces)
moves the randomness to the caller, who draws it from a ``numpy`` generator of its own per run.

The rewrite touches the model's protobuf directly through a minimal schema built here (the few
ONNX message fields it reads or writes, with their numbers from ``onnx.proto``): the ``onnx``
package is not a dependency, and the fields left out (weights, opsets, metadata) pass through
untouched as unknown fields. Each replaced node becomes
``Reshape(Slice(noise_k, 0, ReduceProd(Shape(x))), Shape(x))``; a buffer that is too short
makes the ``Reshape`` fail, and the caller retries with a longer one. The replaced nodes must
draw from N(0, 1) in float32 (what ``torch.randn_like`` exports to); anything else is refused.
"""

from __future__ import annotations

from functools import cache
from typing import Any

#: ONNX TensorProto.DataType FLOAT.
_FLOAT = 1
#: AttributeProto.AttributeType values of the attributes RandomNormalLike may carry.
_ATTR_FLOAT, _ATTR_INT = 1, 2


@cache
def _messages() -> dict[str, Any]:
    """Message classes for the subset of onnx.proto this module needs (proto2: unknown fields kept)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="dualplane_onnx_subset.proto", package="dualplane_onnx",
                                             syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        msg = fdp.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            f = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".dualplane_onnx.{type_name}"

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    string, int32, int64, floating, msg = F.TYPE_STRING, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_FLOAT, F.TYPE_MESSAGE
    message("Attribute", ("name", 1, string, opt, None), ("f", 2, floating, opt, None),
            ("i", 3, int64, opt, None), ("type", 20, int32, opt, None))
    message("Node", ("input", 1, string, rep, None), ("output", 2, string, rep, None),
            ("name", 3, string, opt, None), ("op_type", 4, string, opt, None),
            ("attribute", 5, msg, rep, "Attribute"), ("domain", 7, string, opt, None))
    message("Dimension", ("dim_value", 1, int64, opt, None), ("dim_param", 2, string, opt, None))
    message("Shape", ("dim", 1, msg, rep, "Dimension"))
    message("TensorType", ("elem_type", 1, int32, opt, None), ("shape", 2, msg, opt, "Shape"))
    message("Type", ("tensor_type", 1, msg, opt, "TensorType"))
    message("ValueInfo", ("name", 1, string, opt, None), ("type", 2, msg, opt, "Type"))
    message("Graph", ("node", 1, msg, rep, "Node"), ("input", 11, msg, rep, "ValueInfo"))
    message("Model", ("graph", 7, msg, opt, "Graph"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"dualplane_onnx.{name}"))
            for name in ("Model", "Node", "ValueInfo")}


def noise_as_inputs(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """(the rewritten model, the names of the noise inputs it now takes, in graph order)."""
    classes = _messages()
    model = classes["Model"].FromString(model_bytes)
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.input}
    nodes: list[Any] = []
    inputs: list[str] = []
    for node in graph.node:
        if node.op_type != "RandomNormalLike" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        _check_standard_normal(node)
        name = f"noise_{len(inputs)}"
        if name in taken:
            raise ValueError(f"the model already has a value named {name!r}")
        inputs.append(name)
        nodes.extend(_reshaped_slice(classes["Node"], name, node.input[0], node.output[0]))
        value = graph.input.add(name=name)
        value.type.tensor_type.elem_type = _FLOAT
        value.type.tensor_type.shape.dim.add(dim_param=f"{name}_length")
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), inputs


def _check_standard_normal(node: Any) -> None:
    attrs = {a.name: a for a in node.attribute}
    mean = attrs["mean"].f if "mean" in attrs else 0.0
    scale = attrs["scale"].f if "scale" in attrs else 1.0
    dtype = attrs["dtype"].i if "dtype" in attrs else None
    if mean != 0.0 or scale != 1.0 or dtype not in (None, _FLOAT):
        raise ValueError(f"RandomNormalLike {node.name!r} is not a float32 N(0, 1) draw "
                         f"(mean {mean}, scale {scale}, dtype {dtype})")


def _reshaped_slice(node_class: Any, noise: str, like: str, out: str) -> list[Any]:
    """Nodes computing ``out`` = the first numel(``like``) values of ``noise``, shaped like ``like``."""
    shape, count, zero, flat = (f"{out}/{noise}/{part}" for part in ("shape", "count", "zero", "flat"))
    return [
        node_class(op_type="Shape", input=[like], output=[shape], name=f"{noise}/shape"),
        node_class(op_type="ReduceProd", input=[shape], output=[count], name=f"{noise}/count"),
        # a [0] of the right type without a constant tensor (the subset schema has no TensorProto)
        node_class(op_type="Sub", input=[count, count], output=[zero], name=f"{noise}/zero"),
        node_class(op_type="Slice", input=[noise, zero, count], output=[flat], name=f"{noise}/slice"),
        node_class(op_type="Reshape", input=[flat, shape], output=[out], name=f"{noise}/reshape"),
    ]
