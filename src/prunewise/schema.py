"""One small checker for every JSON file prunewise reads, and the sane limits on what they hold.

A spec is a plain dict in the style of JSON Schema (a small subset, the same one
``report_schema.json`` uses): ``type`` (a name or a list of names among object, array, string,
integer, number, boolean, null), ``enum``, ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum``, ``minLength`` / ``maxLength``, ``minItems`` / ``maxItems``,
``maxProperties``, ``required``, ``properties``, ``additionalProperties`` (a spec, or False for
"no other keys"), ``items``, ``$ref`` into ``$defs`` and ``if`` / ``then``.

:func:`check` raises a one-line :class:`PrunewiseError` such as
``config.json: meta.data.image_size must be an integer <= 4096, got 100000``.
Numbers are checked as values: booleans are not integers, NaN and infinities are not numbers.

Specs here: :data:`CONFIG` (checkpoint ``config.json``), :data:`USER_CONFIG` (a user model's), :data:`MASK_PLAN` and
:data:`CHANNEL_PLAN` (the ``plan.json`` of the two plan kinds), :data:`SAFETENSORS_ENTRY` (one
tensor of a safetensors header), :data:`RESUME` (the masking engine's resume metadata, after
:func:`decode_resume`) and :func:`report_spec` (``report.json``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import PrunewiseError

# ---------------------------------------------------------------------- limits on what files hold
MAX_CLASSES = 100_000            # num_classes of a model
MAX_IN_CHANNELS = 4096           # in_channels of a model
MAX_WIDTH_MULT = 16.0            # MobileNetV2 width multiplier, in (0, 16]
MAX_IMAGE_SIZE = 1024            # an input side (options, a checkpoint's record): runs in bounded memory
MAX_DIM = 1 << 24                # any one dimension of a stored tensor
MAX_RANK = 8                     # dimensions of a stored tensor
MAX_ELEMENTS = 2_000_000_000     # total elements of a model (or of one tensor file)
MAX_TENSORS = 100_000            # tensors in one file / layers in a width table
MAX_JSON_BYTES = 64 << 20        # a JSON file, or a safetensors header
MAX_NAME = 1000                  # a tensor or group name
MAX_DEPTH = 64                   # nesting of lists and objects in a JSON file

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
          "boolean": bool, "null": type(None)}
_ARTICLE = {"object": "an object", "array": "a list", "string": "a string",
            "integer": "an integer", "number": "a number", "boolean": "true or false",
            "null": "null"}


def short(value, limit: int = 60) -> str:
    """``repr`` of a bad value, cut to ``limit`` characters (messages stay one short line)."""
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_type(value, kind: str) -> bool:
    """Whether ``value`` is of JSON type ``kind`` (booleans are not numbers, NaN is not a number)."""
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
            return False
        return kind == "integer" or math.isfinite(value)
    return isinstance(value, _TYPES[kind])


def fail(where: str, path: str, must: str, value) -> None:
    """Raise ``PrunewiseError("<where>: <path> must <must>, got <value>")``."""
    raise PrunewiseError(f"{where}: {path or 'the top level'} must {must}, got {short(value)}")


def _resolve(spec: dict, root: dict) -> dict:
    ref = spec.get("$ref")
    if ref is None:
        return spec
    name = ref.split("/")[-1]
    if not ref.startswith("#/$defs/") or name not in root.get("$defs", {}):
        raise PrunewiseError(f"schema: unsupported $ref {ref!r}")
    return {**_resolve(root["$defs"][name], root), **{k: v for k, v in spec.items() if k != "$ref"}}


def _check_type(value, spec: dict, where: str, path: str) -> None:
    kinds = spec.get("type")
    if kinds is None:
        return
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not any(is_type(value, k) for k in kinds):
        fail(where, path, "be " + " or ".join(_ARTICLE.get(k, k) for k in kinds), value)


def _check_number(value, spec: dict, where: str, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    kind = "an integer" if spec.get("type") == "integer" else "a number"
    for key, ok, word in (("minimum", lambda v, b: v >= b, ">="),
                          ("maximum", lambda v, b: v <= b, "<="),
                          ("exclusiveMinimum", lambda v, b: v > b, ">"),
                          ("exclusiveMaximum", lambda v, b: v < b, "<")):
        if key in spec and not ok(value, spec[key]):
            fail(where, path, f"be {kind} {word} {spec[key]}", value)


def _check_sized(value, spec: dict, where: str, path: str) -> None:
    if isinstance(value, str):
        if len(value) < spec.get("minLength", 0):
            fail(where, path, f"be a string of at least {spec['minLength']} characters", value)
        if len(value) > spec.get("maxLength", math.inf):
            fail(where, path, f"be a string of at most {spec['maxLength']} characters", value)
    if isinstance(value, list):
        if len(value) < spec.get("minItems", 0):
            fail(where, path, f"be a list of at least {spec['minItems']} items", value)
        if len(value) > spec.get("maxItems", math.inf):
            fail(where, path, f"be a list of at most {spec['maxItems']} items", value)
    if isinstance(value, dict) and len(value) > spec.get("maxProperties", math.inf):
        fail(where, path, f"have at most {spec['maxProperties']} entries", f"{len(value)} entries")


def _check_object(value: dict, spec: dict, where: str, path: str, root: dict) -> None:
    for key in spec.get("required", []):
        if key not in value:
            raise PrunewiseError(f"{where}: {path + '.' if path else ''}{key} is missing "
                                 f"(a required field)")
    props = spec.get("properties", {})
    extra = spec.get("additionalProperties")
    for key, item in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key in props:
            _walk(item, props[key], where, sub, root)
        elif extra is False:
            allowed = ", ".join(props) or "none"
            raise PrunewiseError(f"{where}: unknown field {short(sub)} (allowed: {allowed})")
        elif isinstance(extra, dict):
            _walk(item, extra, where, sub, root)


def _walk(value, spec: dict, where: str, path: str, root: dict) -> None:
    spec = _resolve(spec, root)
    _check_type(value, spec, where, path)
    if "enum" in spec and not any(value == e and isinstance(value, bool) == isinstance(e, bool)
                                  for e in spec["enum"]):
        fail(where, path, "be one of " + ", ".join(short(e) for e in spec["enum"]), value)
    _check_number(value, spec, where, path)
    _check_sized(value, spec, where, path)
    if isinstance(value, dict):
        _check_object(value, spec, where, path, root)
    if isinstance(value, list) and "items" in spec:
        for i, item in enumerate(value):
            _walk(item, spec["items"], where, f"{path}[{i}]", root)
    if "if" in spec and "then" in spec and matches(value, spec["if"], root):
        _walk(value, spec["then"], where, path, root)


def check(obj, spec: dict, where: str, path: str = "", root: dict | None = None) -> None:
    """Raise a one-line PrunewiseError naming ``where`` (the file) and the field path unless
    ``obj`` satisfies ``spec``; ``root`` holds the ``$defs`` (default: ``spec`` itself)."""
    _walk(obj, spec, str(where), path, spec if root is None else root)


def matches(obj, spec: dict, root: dict | None = None) -> bool:
    """Whether ``obj`` satisfies ``spec`` (:func:`check` without the error)."""
    try:
        check(obj, spec, "", root=root)
    except PrunewiseError:
        return False
    return True


def parse_json(text: str | bytes, where: str):
    """``json.loads`` with every failure (syntax, encoding, too deep, too big) as PrunewiseError."""
    if len(text) > MAX_JSON_BYTES:
        raise PrunewiseError(f"{where}: too large ({len(text)} bytes, at most {MAX_JSON_BYTES})")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise PrunewiseError(f"corrupt {where}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
        raise PrunewiseError(f"corrupt {where}: {short(str(e), 200)}") from None
    try:
        deep = depth(obj)
    except PrunewiseError as e:
        raise PrunewiseError(f"{where}: {e}") from None
    if deep > MAX_DEPTH:
        raise PrunewiseError(f"corrupt {where}: nested more than {MAX_DEPTH} levels deep")
    return obj


def depth(obj) -> int:
    """How deeply lists and objects nest in ``obj`` (iterative: any depth is measured safely);
    a string that is not valid Unicode (a lone surrogate, which JSON's ``\\ud800`` escape can
    make) is refused on the way, since no file could hold it when written back."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            item = list(item.keys()) + list(item.values())
        if isinstance(item, str):
            _unicode(item)
        if isinstance(item, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in item if isinstance(v, (dict, list, str)))
    return deepest


def _unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PrunewiseError(f"a string holds a lone surrogate (not valid Unicode): "
                             f"{text.encode('utf-8', 'replace').decode()[:60]!r}") from None


# ---------------------------------------------------------------------- specs
def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
SHAPE = {"type": "array", "maxItems": MAX_RANK, "items": _int(0, MAX_DIM)}
ANY_OBJECT = {"type": "object"}
DIGESTS = {"type": "object", "maxProperties": 2 * 32 + 1, "additionalProperties": {
    "type": "string", "minLength": 64, "maxLength": 64}}
"""``{file name: SHA-256 hex}`` of the files a folder's index file binds (checked by
:func:`prunewise.files.check_digests`, which decides which names may appear)."""

WIDTHS = {"type": "object", "maxProperties": MAX_TENSORS,
          "additionalProperties": {**SHAPE, "minItems": 1}}
CHECKPOINT_META = {"type": "object", "properties": {
    "data": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": MAX_NAME},
        "root": {"type": ["string", "null"], "minLength": 1, "maxLength": 4096},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2 ** 32 - 1},
        "seq_len": _int(1, 1 << 20),
        "image_size": _int(1, MAX_IMAGE_SIZE)}}}}
#: An example input's record: per input ("" for a single tensor) its shape without the batch
#: and its dtype; at most 2^24 elements per sample.
INPUTS = {"type": "object", "maxProperties": 64, "additionalProperties": {
    "type": "object", "required": ["shape", "dtype"], "additionalProperties": False,
    "properties": {"shape": {**SHAPE, "maxItems": 6, "items": _int(1, 1 << 16)},
                   "dtype": {"type": "string", "enum": ["float32", "float64", "float16",
                                                        "bfloat16", "int64", "int32", "uint8",
                                                        "bool"]}}}}

#: Tensors of a state dict that are another's (tied weights): saved once, under the other name.
TIED = {"type": "object", "maxProperties": 4096,
        "additionalProperties": {"type": "string", "maxLength": MAX_NAME}}

CONFIG = {
    "type": "object",
    "required": ["format", "arch", "num_classes", "in_channels"],
    "additionalProperties": False,
    "properties": {
        "format": {"type": "integer", "enum": [1]},
        "arch": NAME,
        "num_classes": _int(1, MAX_CLASSES),
        "in_channels": _int(1, MAX_IN_CHANNELS),
        "width_mult": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WIDTH_MULT},
        "dropout": {"type": "number", "minimum": 0, "maximum": 1},
        "zero_init_residual": {"type": "boolean"},
        "widths": WIDTHS,
        "meta": CHECKPOINT_META,
        "structure": _int(1, 32),
        "inputs": INPUTS,
        "digests": DIGESTS,
    },
}
"""A checkpoint's ``config.json`` (architecture arguments, widths, free-form ``meta``; a
structurally pruned model's plan count and example input spec)."""

USER_CONFIG = {
    "type": "object",
    "required": ["format", "kind", "model"],
    "additionalProperties": False,
    "properties": {
        "format": {"type": "integer", "enum": [1]},
        "kind": {"type": "string", "enum": ["user"]},
        "model": NAME,
        "widths": WIDTHS,
        "tied": TIED,
        "meta": CHECKPOINT_META,
        "structure": _int(1, 32),
        "inputs": INPUTS,
        "digests": DIGESTS,
    },
}
"""The ``config.json`` of a user model's checkpoint (rebuilt by the caller's factory)."""

MASK_PLAN = {
    "type": "object",
    "required": ["kind", "shapes"],
    "properties": {
        "format": {"type": "integer", "enum": [1]},
        "kind": {"type": "string", "enum": ["masks"]},
        "method": {"type": "string", "maxLength": MAX_NAME},
        "sparsity": {"type": "number", "minimum": 0, "maximum": 1},
        "kept": _int(0, MAX_ELEMENTS),
        "total": _int(0, MAX_ELEMENTS),
        "shapes": {"type": "object", "maxProperties": MAX_TENSORS, "additionalProperties": SHAPE},
        "digests": DIGESTS,
        "meta": {"type": "object", "properties": {
            "settings": ANY_OBJECT,
            "iterations": _int(0, 1_000_000),
            "history": {"type": "array", "items": ANY_OBJECT}}},
    },
}
"""The ``plan.json`` of a :class:`prunewise.plan.MaskPlan`."""

CHANNEL_PLAN = {
    "type": "object",
    "required": ["kind", "sizes"],
    "properties": {
        "format": {"type": "integer", "enum": [1]},
        "kind": {"type": "string", "enum": ["channels"]},
        "arch": {"type": "string", "maxLength": 64},
        "sizes": {"type": "object", "maxProperties": MAX_TENSORS,
                  "additionalProperties": _int(1, MAX_DIM)},
        "counts": {"type": "object", "additionalProperties": _int(1, MAX_DIM)},
        "digests": DIGESTS,
        "meta": ANY_OBJECT,
    },
}
"""The ``plan.json`` of a :class:`prunewise.plan.ChannelPlan`."""

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of every safetensors dtype prunewise accepts."""

SAFETENSORS_ENTRY = {
    "type": "object",
    "required": ["dtype", "shape", "data_offsets"],
    "additionalProperties": False,
    "properties": {
        "dtype": {"type": "string", "enum": sorted(DTYPE_BYTES)},
        "shape": SHAPE,
        "data_offsets": {"type": "array", "minItems": 2, "maxItems": 2,
                         "items": _int(0, 1 << 62)},
    },
}
"""One tensor's entry in a safetensors header."""

SAFETENSORS_METADATA = {"type": "object", "additionalProperties": {"type": "string"}}
"""The ``__metadata__`` entry of a safetensors header (strings only)."""

RESUME = {
    "type": "object",
    "required": ["config", "iteration", "history"],
    "properties": {
        "config": ANY_OBJECT,
        "iteration": _int(0, 1_000_000),
        "history": {"type": "array", "maxItems": 1_000_000, "items": {
            "type": "object", "required": ["iteration", "sparsity"],
            "properties": {"iteration": _int(1, 1_000_000),
                           "kept": _int(0, MAX_ELEMENTS),
                           "sparsity": {"type": "number", "minimum": 0, "maximum": 1}}}},
    },
}
"""The masking engine's resume metadata once decoded by :func:`decode_resume`."""


def decode_resume(metadata, where: str) -> tuple[dict, int, list]:
    """Check and decode the ``__metadata__`` of a resume file (``config`` and ``history`` are
    JSON strings, ``iteration`` a decimal string); returns ``(config, iteration, history)``.
    The history must have one row per completed iteration."""
    check(metadata, {"type": "object", "required": ["config", "iteration", "history"],
                     "properties": {k: {"type": "string"} for k in ("config", "iteration",
                                                                       "history")}}, where)
    text = metadata["iteration"]
    if not (text.isascii() and text.isdigit() and len(text) <= 7):
        fail(where, "iteration", "be a whole number of iterations", text)
    obj = {"config": parse_json(metadata["config"], f"{where} (config)"),
           "iteration": int(text),
           "history": parse_json(metadata["history"], f"{where} (history)")}
    check(obj, RESUME, where)
    if len(obj["history"]) != obj["iteration"]:
        fail(where, "history", f"have one row per completed iteration ({obj['iteration']})",
             f"{len(obj['history'])} rows")
    return obj["config"], obj["iteration"], obj["history"]


REPORT_SCHEMA_PATH = Path(__file__).with_name("report_schema.json")


def report_spec() -> dict:
    """The ``report.json`` spec (``report_schema.json``, beside this module)."""
    return json.loads(REPORT_SCHEMA_PATH.read_text(encoding="utf-8"))


def check_report(report, where: str = "report.json") -> None:
    """Check a loaded ``report.json`` against :func:`report_spec`."""
    check(report, report_spec(), where)
