"""The check of an ONNX file's graph, before onnxruntime sees it.

Every node must be one of ``ONNX_OPS`` in the default domain, the operations pate's exporter
writes for its architectures and a few plain ones other exporter versions use for the same layers;
no control flow (Loop, If, Scan: a 10^15-step Loop would run forever), no subgraph, no local
function, no external or sparse data. The graph is read from the protobuf here (the ``onnx``
package is not needed to predict).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import PateError

# The operations an ONNX student may hold: what pate's exporter writes (cnn-*, scatter-*), and the
# plain, bounded ones other exporter versions use for the same layers. No control flow.
ONNX_OPS = frozenset({
    "Add", "Concat", "Conv", "Gather", "Gemm", "InstanceNormalization", "MatMul", "MaxPool", "Mul", "Pad",
    "ReduceSum", "Relu", "Reshape", "Shape", "Slice", "Sqrt", "Sub", "Unsqueeze",
    "AveragePool", "BatchNormalization", "Cast", "Constant", "Div", "Flatten", "GroupNormalization", "Identity",
    "LayerNormalization", "Neg", "Pow", "ReduceMean", "Squeeze", "Transpose"})

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class _Damaged(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Damaged("a truncated or overlong varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview):
    """(field number, value) of each field of the protobuf message ``data``: an int for numbers, a
    memoryview for length-delimited fields. Groups and unknown wire types are damage."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Damaged("field number 0")
        if wire == _WIRE_VARINT:
            value, at = _varint(data, at)
        elif wire in (_WIRE_I64, _WIRE_I32):
            size = 8 if wire == _WIRE_I64 else 4
            if at + size > len(data):
                raise _Damaged("a truncated number")
            value, at = int.from_bytes(data[at:at + size], "little"), at + size
        elif wire == _WIRE_LEN:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise _Damaged("a truncated field")
            value, at = data[at:at + size], at + size
        else:
            raise _Damaged(f"wire type {wire}")
        yield number, value


def _text(value: memoryview) -> str:
    return bytes(value[:64]).decode("utf-8", "replace")


def check_onnx_graph(data: bytes, path: Path) -> None:
    """Refuse, before onnxruntime sees it, an ONNX model (the bytes ``data``) that is not made of
    ``ONNX_OPS`` in the default domain: control flow, subgraphs, local functions, training graphs,
    sparse or external data are things pate's exporter never writes."""
    def refuse(what: str) -> PateError:
        return PateError(f"{path}: its ONNX graph holds {what}, which pate's exporter never writes (control flow "
                         "may run without end); it is not a pate student")

    try:
        graphs = 0
        for number, value in _fields(memoryview(data)):
            if number == 7 and isinstance(value, memoryview):  # graph (several are merged: each checked)
                graphs += 1
                _check_graph(value, refuse)
            elif number in (20, 25):  # training_info, functions
                raise refuse("a local function" if number == 25 else "a training graph")
    except _Damaged as exc:
        raise PateError(f"{path} is not an ONNX student exported by pate (its protobuf is damaged: {exc})") from None
    if not graphs:
        raise PateError(f"{path} is not an ONNX student exported by pate (it holds no graph)")


def _check_graph(graph: memoryview, refuse: Callable[[str], PateError]) -> None:
    for number, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == 1:  # node
            op_type, domain, attributes = "", "", []
            for field, item in _fields(value):
                if field == 4 and isinstance(item, memoryview):  # op_type: the last one counts, as in protobuf
                    op_type = _text(item)
                elif field == 7 and isinstance(item, memoryview):
                    domain = _text(item)
                elif field == 5 and isinstance(item, memoryview):  # attribute
                    attributes.append(item)
            if domain not in ("", "ai.onnx"):
                raise refuse(f"a node of the operator domain {domain!r}")
            if op_type not in ONNX_OPS:
                raise refuse(f"a {op_type!r} node")
            for attribute in attributes:
                for part, inner in _fields(attribute):
                    if part in (6, 11):  # g, graphs
                        raise refuse(f"a subgraph in a {op_type!r} node")
                    if part in (22, 23):  # sparse_tensor(s)
                        raise refuse("sparse data")
                    if part in (5, 10) and isinstance(inner, memoryview):  # t, tensors
                        _check_tensor(inner, refuse)
        elif number == 5:  # initializer
            _check_tensor(value, refuse)
        elif number == 15:  # sparse_initializer
            raise refuse("sparse data")


def _check_tensor(tensor: memoryview, refuse: Callable[[str], PateError]) -> None:
    for number, value in _fields(tensor):
        if number == 13 or (number == 14 and value == 1):  # external_data, data_location EXTERNAL
            raise refuse("a tensor stored in another file")
