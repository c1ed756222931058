"""ONNX ops that moa-edge does not implement itself but whose schema defines them as a function of
other ops (DynamicQuantizeLinear, MeanVarianceNormalization, the window functions, ...) are
replaced by that function's body at import, as onnx's own expanded test models are: each such node
becomes a call of a local function holding the body of its version (for a context-dependent
function, the body onnx builds for the node's attributes and input types), which onnx's inliner
then inlines."""
from __future__ import annotations

import onnx
import onnx.inliner
from onnx import helper

DOMAIN = "moa_edge.expanded"  # the local functions' own domain, gone after inlining


def _input_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    for tensor in model.graph.initializer:
        types.setdefault(tensor.name, helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims)))
    return types


def _body(schema, node: onnx.NodeProto, opset: int, types) -> onnx.FunctionProto | None:
    """The function defining `node`'s op at `opset`, or None if its schema has none."""
    body = onnx.FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= opset]
    if plain:
        body.ParseFromString(schema.get_function_with_opset_version(max(plain)))
        return body
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not dependent:
        return None
    known = types()
    if any(name and name not in known for name in node.input):
        return None
    serialized = [known[name].SerializeToString() if name else onnx.TypeProto().SerializeToString()
                  for name in node.input]
    body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
        max(dependent), node.SerializeToString(), serialized))
    return body


def _signature(schema) -> tuple:
    """What a node of the op can say: its inputs, outputs, attributes and their defaults."""
    return ([i.name for i in schema.inputs], [o.name for o in schema.outputs],
            sorted((name, a.default_value.SerializeToString()) for name, a in schema.attributes.items()))


def _means_the_same_at(body: onnx.FunctionProto, opset: int) -> bool:
    """Whether every op of the body, written for the body's own opset, takes the same inputs,
    outputs, attributes and defaults at the model's `opset` (versions between them only added
    types, as Constant 13 -> 21; Softmax 11 -> 13 changed its axis default and is caught); if so
    the body is re-stamped with `opset` (the inliner wants one opset). Every function body of onnx
    1.23 that this accepts was checked by hand to differ only in types."""
    own = next((o for o in body.opset_import if o.domain in ("", "ai.onnx")), None)
    if own is None or own.version == opset:
        return True
    for inner in body.node:
        if inner.domain not in ("", "ai.onnx"):
            return False
        try:
            if (_signature(onnx.defs.get_schema(inner.op_type, own.version, ""))
                    != _signature(onnx.defs.get_schema(inner.op_type, opset, ""))):
                return False
        except onnx.defs.SchemaError:
            return False
    own.version = opset
    return True


def expand_unimplemented(model: onnx.ModelProto, implemented: set[str]) -> onnx.ModelProto:
    """The model with each node of an op outside `implemented` that has a function body expanded."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    cached = {}

    def types():
        if "types" not in cached:
            cached["types"] = _input_types(model)
        return cached["types"]

    expanded = 0
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in implemented or opset is None:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            continue
        body = _body(schema, node, opset, types)
        if body is None or not body.node or not _means_the_same_at(body, opset):
            continue
        present = {a.name for a in node.attribute}  # the schema's defaults, which the body may refer to
        node.attribute.extend(a.default_value for name, a in schema.attributes.items()
                              if name not in present and a.default_value.name)
        body.name, body.domain = f"{node.op_type}_{expanded}", DOMAIN
        node.op_type, node.domain = body.name, DOMAIN
        model.functions.append(body)
        expanded += 1
    if not expanded:
        return model
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return onnx.inliner.inline_local_functions(model)
