"""A small recording helper for the graphs built with ``onnx_ir``: nodes, constants, typed values.

The vision and embedding graphs of a multimodal artifact are built with it; each call records one
node on an ``onnx_ir`` tape, constants are made once per value, and ``model`` wraps the recorded
nodes into a model with the opsets onnxruntime runs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MS = "com.microsoft"
FLOAT = {"float32": ir.DataType.FLOAT, "float16": ir.DataType.FLOAT16}


class GraphTape:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tape = ir.tape.Tape()
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self._constants: dict[str, ir.Value] = {}
        self._count = 0

    def op(self, op_type: str, inputs, name: str = "", domain: str = "", **attributes) -> ir.Value:
        self._count += 1
        node = f"{self.prefix}/{name or op_type}_{self._count}"
        return self.tape.op(op_type, inputs, attributes or None, domain=domain, name=node)

    def const(self, values, dtype=np.int64) -> ir.Value:
        array = np.asarray(values, dtype=dtype)
        key = f"{self.prefix}/constants/{array.dtype.name.upper()}/{array.shape}/{array.tolist()}"
        if key not in self._constants:
            self._constants[key] = self.tape.op("Constant", [], {"value": ir.Tensor(array, name=key)}, name=key)
        return self._constants[key]

    def initializer(self, tensor) -> ir.Value:
        return self.tape.initializer(tensor)

    def input(self, name: str, dtype: ir.DataType, dims: list) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))
        self.inputs.append(value)
        return value

    def output(self, value: ir.Value, name: str, dtype: ir.DataType, dims: list) -> None:
        value.name = name
        value.type, value.shape = ir.TensorType(dtype), ir.Shape(dims)
        self.outputs.append(value)

    def model(self, graph_name: str) -> ir.Model:
        graph = ir.Graph(self.inputs, self.outputs, nodes=self.tape.nodes, initializers=self.tape.initializers,
                         opset_imports={"": 21, MS: 1}, name=graph_name)
        return ir.Model(graph, ir_version=10, producer_name="edgeslm")
