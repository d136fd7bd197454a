"""`fsa lint`'s checks: generic functions over the rules in rules.py and the graph of graph.py."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto

from fsa_deploy.export.lint.graph import Graph, LintReport, Violation, value_tainted
from fsa_deploy.export.lint.rules import (
    CONTROL_FLOW,
    DATA_DEPENDENT,
    DEFAULT_DOMAINS,
    FLOAT_DTYPES,
    FLOAT_TYPE_STRS,
    INT_ROWS,
    LABELS,
    OPSETS,
    PLUGIN_ALLOWLIST,
    SHAPE_INPUTS,
    TABLES,
    TRT_DTYPES,
    AttrRule,
    ConstInput,
    Target,
)


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _check_op(g: Graph, node: onnx.NodeProto, target: Target, tainted: set[str]) -> list[tuple[str, str]]:
    """(rule, message) pairs for the op itself: domain, support, control flow, restrictions."""
    op = node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        if (node.domain, op) in PLUGIN_ALLOWLIST[target]:
            return []
        return [("custom-domain", f"domain '{node.domain}' is not ONNX's; no TensorRT plugin is allowed for it")]
    if op in CONTROL_FLOW:
        return [("control-flow", f"{op} must be unrolled at export (project rule)")]
    found = [("data-dependent-op", DATA_DEPENDENT[op])] if op in DATA_DEPENDENT else []
    if op not in TABLES[target]:
        return [*found, ("op-unsupported", f"{op} is not in {LABELS[target]}'s ONNX operator table")]
    rule = TABLES[target][op]
    if rule is None:
        return [*found, ("op-unsupported", f"{LABELS[target]}'s ONNX parser does not support {op}")]
    if found:
        return found
    found = [r for ci in rule.const_inputs if (r := _check_const_input(g, node, ci, tainted))]
    found += [("op-attribute", m) for ar in rule.attrs if (m := _check_attr(g, node, ar))]
    extra = [o for o in node.output[rule.max_outputs or len(node.output) :] if o]
    if extra:
        found.append(("op-output", f"outputs {extra} unsupported (TensorRT: first {rule.max_outputs} only)"))
    shape = g.shapes.get(node.input[0]) if node.input else None
    if rule.ranks and shape is not None and len(shape) not in rule.ranks:
        found.append(("op-rank", f"input rank {len(shape)}, TensorRT accepts {sorted(rule.ranks)}"))
    return found


def _check_const_input(g: Graph, node: onnx.NodeProto, ci: ConstInput, tainted: set[str]) -> tuple[str, str] | None:
    name = node.input[ci.index] if len(node.input) > ci.index else ""
    if name:
        is_const, value = g.const_value(name)
        if not is_const and ci.from_shapes and name not in tainted:
            return None  # computed from shapes only: TensorRT resolves it at build time
        if not is_const:
            what = "a build-time constant or computed from shapes" if ci.from_shapes else "a build-time constant"
            return ci.rule, f"{ci.name} ('{name}') must be {what} (initializer or Constant)"
        if value is None and (ci.below is not None or ci.equals is not None):
            return ci.rule, f"{ci.name} ('{name}') is a constant whose value cannot be read (external data?)"
    else:  # older opsets carry it as an attribute (TopK-1's k, Squeeze-1's axes)
        attr = _attr(node, ci.name.lower())
        if attr is None:
            return None
        value = np.asarray(onnx.helper.get_attribute_value(attr))
    if value is None or value.size == 0:
        return None
    if ci.below is not None and (value >= ci.below).any():
        return ci.rule, f"{ci.name} = {value.tolist()} must be < {ci.below}"
    if ci.equals is not None and (value != ci.equals).any():
        return ci.rule, f"{ci.name} must be all {ci.equals}"
    return None


def _check_attr(g: Graph, node: onnx.NodeProto, ar: AttrRule) -> str | None:
    if ar.float_only and (not node.input or g.dtypes.get(node.input[0]) not in FLOAT_DTYPES):
        return None
    attr = _attr(node, ar.name)
    if ar.all_ones:
        if attr is not None and any(v != 1 for v in attr.ints):
            return f"{ar.name} = {list(attr.ints)} must be empty or all ones"
        return None
    if not ar.allowed:
        return f"attribute {ar.name} is not supported" if attr is not None else None
    value = onnx.helper.get_attribute_value(attr) if attr is not None else ar.default
    value = value.decode() if isinstance(value, bytes) else value
    if value not in ar.allowed:
        return f"{ar.name} = {value!r} is not supported (TensorRT: {', '.join(map(str, sorted(ar.allowed)))})"
    return None


def _check_int_data(g: Graph, node: onnx.NodeProto, target: Target) -> tuple[str, str] | None:
    """int32 / int64 bound to an op's floating-or-integer data type where its row lacks that type."""
    rule = TABLES[target].get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
    if rule is None:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, g.opset, "")
    except onnx.defs.SchemaError:
        return None
    vars_ = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for names, params in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for i, name in enumerate(names):
            row = INT_ROWS.get(g.dtypes.get(name, 0)) if name and params else None
            if row is None or row[0] in rule.types:
                continue
            param = params[min(i, len(params) - 1)]  # the last formal may be variadic
            if vars_.get(param.type_str, set()) & FLOAT_TYPE_STRS:
                types = ", ".join(sorted(rule.types))
                return row[1], f"{row[0].lower()} '{name}' as {param.name}; TensorRT {node.op_type} takes {types}"
    return None


def _dtype_rule(dtype: int, graph_io: bool) -> str | None:
    if dtype == TensorProto.DOUBLE:
        return "dtype-float64"
    if dtype == TensorProto.STRING:
        return "dtype-string"
    if dtype in TRT_DTYPES or (dtype == TensorProto.UINT8 and graph_io):
        return None
    return "dtype-unsupported"


def _check_dtypes(g: Graph) -> list[Violation]:
    """float64 / string / other non-TensorRT dtypes on any tensor, Cast target or constant attribute."""
    found: dict[tuple[str, str, str], list[str]] = {}
    io = {*g.inputs, *(o.name for o in g.model.graph.output)}
    owners = [(n, "input", [n]) for n in g.inputs] + [(n, "initializer", [n]) for n in g.inits]
    owners += [(label, node.op_type, list(node.output)) for label, node in g.nodes]
    for label, op, names in owners:
        for name in names:
            rule = _dtype_rule(g.dtypes.get(name, TensorProto.FLOAT), name in io)
            if rule:
                type_name = TensorProto.DataType.Name(g.dtypes[name])
                found.setdefault((label, op, rule), []).append(f"'{name}' is {type_name}")
    for label, node in g.nodes:
        for attr in node.attribute:
            types = [attr.i] if node.op_type == "Cast" and attr.name == "to" else []
            types += [t.data_type for t in (attr.t, *attr.tensors) if t.data_type]
            if attr.name in ("value_string", "value_strings"):
                types.append(TensorProto.STRING)
            for dtype in types:
                if rule := _dtype_rule(dtype, False):
                    detail = f"attribute {attr.name} is {TensorProto.DataType.Name(dtype)}"
                    found.setdefault((label, node.op_type, rule), []).append(detail)
    return [Violation(label, op, rule, "; ".join(dict.fromkeys(d))) for (label, op, rule), d in found.items()]


_EXPR = re.compile(r"[\w\s+\-*/%().,]+")
_NAME = re.compile(r"[A-Za-z_]\w*(?![\w(])")  # identifiers that are not function calls


def _symbol_ok(symbol: str, allowed: set[str]) -> bool:
    """An input symbol, or an expression over them (the dynamo exporter writes 'K*B')."""
    if symbol in allowed:
        return True
    names = _NAME.findall(symbol)
    return bool(names) and _EXPR.fullmatch(symbol) is not None and set(names) <= allowed


def _unknown_dims(shape: list[onnx.TensorShapeProto.Dimension] | None, allowed: set[str]) -> tuple[set[str], int]:
    """(symbols not derived from graph-input symbols, count of unnamed dims; -1: rank unknown)."""
    if shape is None:
        return set(), -1
    symbols, unnamed = set(), 0
    for d in shape:
        if d.HasField("dim_value") and d.dim_value >= 0:
            continue
        if not d.dim_param:
            unnamed += 1
        elif not _symbol_ok(d.dim_param, allowed):
            symbols.add(d.dim_param)
    return symbols, unnamed



def _graph_input_symbols(g: Graph) -> tuple[set[str], list[Violation]]:
    allowed: set[str] = set()
    found = []
    for name in g.inputs:
        shape = g.shapes.get(name)
        if shape is None:
            found.append(Violation(name, "input", "dynamic-shape", "graph input has no shape"))
            continue
        allowed |= {d.dim_param for d in shape if d.dim_param}
        if any(not d.dim_param and not d.HasField("dim_value") for d in shape):
            found.append(Violation(name, "input", "dynamic-shape", "a dynamic dim has no symbol name"))
    return allowed, found


def _check_shapes(g: Graph, skip: set[str]) -> list[Violation]:
    """Dims neither static nor derived from graph-input symbols, reported where they first appear.

    Shape inference names an unknown dim with a fresh symbol (unk__N) that propagates; each
    is reported once, at its origin, and only when it comes from tensor values. Nodes in
    `skip` already carry a violation (unsupported op, non-constant K, ...) that explains them.
    """
    allowed, found = _graph_input_symbols(g)
    tainted = value_tainted(g)
    accounted = {v.node for v in found}  # tensors whose unknown dims are explained already
    seen: set[str] = set()
    for label, node in g.nodes:
        inputs_accounted = any(i in accounted for i in node.input)
        problems = []
        for out in filter(None, node.output):
            symbols, unnamed = _unknown_dims(g.shapes.get(out), allowed)
            if symbols or unnamed:
                accounted.add(out)
            fresh, seen = symbols - seen, seen | symbols
            if fresh:
                problems.append(f"'{out}' has dims {sorted(fresh)}")
            elif unnamed and not inputs_accounted:
                problems.append(f"'{out}' has " + ("no inferred shape" if unnamed < 0 else "unknown dims"))
        if node.op_type in SHAPE_INPUTS:
            data = any(node.input[i] in tainted for i in SHAPE_INPUTS[node.op_type] if i < len(node.input))
        else:
            data = not inputs_accounted
        if problems and data and label not in skip:
            why = "not static and not derived from graph-input dims (a data-dependent shape)"
            found.append(Violation(label, node.op_type, "dynamic-shape", f"{'; '.join(problems)}: {why}"))
    return found


def _check_opset(g: Graph, target: Target) -> list[Violation]:
    low, high = OPSETS[target]
    if low <= g.opset <= high:
        return []
    return [Violation("<graph>", "opset_import", "opset", f"opset {g.opset}, {LABELS[target]}: {low}-{high}")]


def lint_graph(g: Graph, target: Target) -> LintReport:
    tainted = value_tainted(g)
    found = [*g.notes, *_check_opset(g, target)]
    for label, node in g.nodes:
        found += [Violation(label, node.op_type, r, m) for r, m in _check_op(g, node, target, tainted)]
        if hit := _check_int_data(g, node, target):
            found.append(Violation(label, node.op_type, *hit))
    found += _check_dtypes(g) + _check_shapes(g, skip={v.node for v in found})
    return LintReport(target, len(g.nodes), found)
