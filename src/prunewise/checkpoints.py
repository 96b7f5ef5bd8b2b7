"""Checkpoint folders: a model as ``config.json`` + ``model.safetensors``, never a pickle.

Two kinds of folder, told apart by ``config.json``:

* a **zoo** model's config holds the architecture name, its arguments, the layer widths and
  free-form metadata (such as the data set the model was trained on); loading rebuilds the
  architecture from the zoo;
* a **user** model's config (``"kind": "user"``) holds the class name (for information only),
  the layer widths and the metadata; loading needs the code that builds it, given by the caller
  (``load_model(folder, build=FACTORY)``, ``--model FILE.py:FACTORY``): a checkpoint never names
  code to run by itself.

A structurally pruned model's folder also records how it was cut: its channel plans, in order,
under ``structure/0``, ``structure/1``, ... with the example input they were traced on
(``inputs``). Loading then builds the dense model and applies the plans again with the same
surgery (attention head counts included), so any architecture reloads exactly; an older zoo
folder without plans is resized layer by layer from the saved shapes. Everything is checked
before anything large is allocated, and nothing is unpickled. Files are written through
:mod:`prunewise.files` (atomic, checked), ``config.json`` last.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import dist, files, layers, models, schema, utils
from .structured import surgery
from .errors import PrunewiseError
from .plan import PLAN_JSON, PLAN_TENSORS, ChannelPlan

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STRUCTURE = "structure"
FORMAT = 1
USER = "user"
#: How many channel plans a checkpoint may chain (a model pruned again and again).
MAX_PLANS = 32
PLAN_NAMES = (PLAN_TENSORS, PLAN_JSON)

layer_widths = layers.layer_widths
input_spec, example_of = utils.input_spec, utils.example_of


def save_model(model: nn.Module, folder: str | Path, *, meta: dict | None = None) -> Path:
    """Save ``model`` as a checkpoint folder; returns the folder. A zoo model (built by
    :func:`prunewise.models.create`) reloads by itself; any other ``nn.Module`` reloads with
    ``load_model(folder, build=FACTORY)``. A model cut by channel plans (``prunewise_structure``,
    set by the structured pipeline) keeps them, so it reloads through the same surgery."""
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"save_model needs a torch.nn.Module, got {type(model).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PrunewiseError(f"checkpoint path exists and is not a folder: {folder}")
    cfg = getattr(model, "prunewise_config", None)
    if cfg and "arch" in cfg:
        head = {"format": FORMAT, **cfg}
    else:
        cls = type(model)
        head = {"format": FORMAT, "kind": USER, "model": f"{cls.__module__}.{cls.__qualname__}"}
    plans = list(getattr(model, "prunewise_structure", None) or [])
    if len(plans) > MAX_PLANS:
        raise PrunewiseError(f"a checkpoint chains at most {MAX_PLANS} channel plans")
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    alias = tied(state)
    files.write_tensors(folder / WEIGHTS, {k: v for k, v in state.items() if k not in alias})
    if alias:
        head["tied"] = alias
    # rank 0 alone clears the old plans (the other ranks wait): a rank that removed them late
    # under torchrun deleted the plan rank 0 had just written
    dist.main_writes(lambda: (folder / STRUCTURE).is_dir() and shutil.rmtree(folder / STRUCTURE))
    for i, plan in enumerate(plans):
        plan.save(folder / STRUCTURE / str(i))
    inputs = getattr(model, "prunewise_inputs", None)
    if plans and not inputs:
        raise PrunewiseError("a model cut by channel plans needs prunewise_inputs (the example "
                             "input spec the plans were traced on) to be saved")
    if plans:
        head["structure"] = len(plans)
    if inputs:
        head["inputs"] = inputs
    bound = bound_files(len(plans))
    files.write_json(folder / CONFIG, {**head, "widths": layer_widths(model), "meta": meta or {},
                                       "digests": {n: files.digest(folder / n) for n in bound}})
    return folder


def tied(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """The entries of a state dict that are another entry's tensor (weights tied between
    modules, such as a language model's input and output embeddings): ``{alias: name}``, the
    name being the first entry that holds the tensor. A checkpoint saves each tensor once."""
    first, out = {}, {}
    for k, v in state.items():
        if not v.numel():
            continue
        key = (v.device, v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if key in first:
            out[k] = first[key]
        else:
            first[key] = k
    return out


def bound_files(plans: int) -> list[str]:
    """The files a checkpoint's ``config.json`` binds by digest: the weights and every plan's."""
    return [WEIGHTS] + [f"{STRUCTURE}/{i}/{name}" for i in range(plans) for name in PLAN_NAMES]


def read_config(folder: str | Path) -> dict:
    """The ``config.json`` of a checkpoint folder, checked against :data:`schema.CONFIG` (types,
    ranges, known fields; ``meta`` and ``meta.data`` objects, ``meta.data.image_size`` bounded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunewiseError(f"checkpoint folder not found: {folder}")
    if not (folder / CONFIG).exists() and not (folder / CONFIG).is_symlink():
        raise PrunewiseError(f"{folder} is not a checkpoint (no {CONFIG}): pass the folder "
                             f"`train --out` wrote, or a prune run's --out folder (its "
                             f"{RUN_MODEL}/ is the model)")
    cfg = files.read_json(folder / CONFIG, "checkpoint config")
    kind = cfg.get("kind") if isinstance(cfg, dict) else None
    schema.check(cfg, schema.USER_CONFIG if kind == USER else schema.CONFIG,
                 str(folder / CONFIG))
    return cfg


_NOT_KWARGS = ("format", "arch", "widths", "meta", "structure", "inputs", "digests")


def _model_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _NOT_KWARGS}


def dense_shapes(cfg: dict, where: str = "checkpoint") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of the dense model ``cfg`` describes, computed on
    the meta device (nothing allocated); refuses a model over ``schema.MAX_ELEMENTS`` elements."""
    try:
        with torch.device("meta"):
            dense = models.create(cfg["arch"], **_model_kwargs(cfg))
    except PrunewiseError as e:
        raise PrunewiseError(f"{where}: {e}") from None
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in dense.state_dict().items()}
    total = sum(files.numel(s) for s, _ in shapes.values())
    if total > schema.MAX_ELEMENTS:
        raise PrunewiseError(f"{where}: architecture '{cfg['arch']}' with these arguments has "
                             f"{total} elements, more than {schema.MAX_ELEMENTS}")
    return shapes


def _dtype_kind(name: str) -> str:
    return "bool" if name == "BOOL" else "float" if name.startswith(("F", "BF")) else "int"


def check_against(header: dict[str, dict], dense: dict, where: str, arch: str, *,
                  exact: bool = False) -> None:
    """Refuse saved tensors the architecture cannot have: other names, another rank or kind of
    dtype, any dimension larger than the dense model's (other than the model's, ``exact``), or
    a zero where the dense one is not."""
    missing, extra = sorted(dense.keys() - header.keys()), sorted(header.keys() - dense.keys())
    if missing or extra:
        bits = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise PrunewiseError(f"{where} does not match architecture '{arch}': {'; '.join(bits)}")
    for name, entry in header.items():
        shape, dtype = dense[name]
        saved = tuple(entry["shape"])
        kind = "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "int"
        if (len(saved) != len(shape) or _dtype_kind(entry["dtype"]) != kind
                or (exact and saved != tuple(shape))
                or any(s > d or (s == 0 and d > 0) for s, d in zip(saved, shape))):
            raise PrunewiseError(f"{where}: tensor '{name}' has shape {list(saved)} "
                                 f"({entry['dtype']}), which architecture '{arch}' cannot have "
                                 f"(dense shape {list(shape)}, {str(dtype).replace('torch.', '')})")


#: The folder a prune or train run writes its model into, inside its ``--out``.
RUN_MODEL = "model"


def model_folder(folder: str | Path) -> Path:
    """The checkpoint folder ``folder`` names: itself, or the ``model`` folder of the run
    folder (a prune command's ``--out``) it is."""
    folder = Path(folder)
    if folder.is_dir() and not (folder / CONFIG).exists() \
            and (folder / RUN_MODEL / CONFIG).is_file():
        return folder / RUN_MODEL
    return folder


def load_model(folder: str | Path, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild a checkpoint's model (pruned widths included) without unpickling anything.

    ``build``: a function returning the dense model, needed for a user model's folder (and used
    instead of the zoo for a zoo folder when given). Everything is checked before anything large
    is allocated: ``config.json`` against its schema, the safetensors header against the file,
    and the saved shapes against the architecture (the dense zoo model on the meta device, or
    the model ``build`` and the recorded plans give).
    """
    folder = model_folder(folder)
    cfg = read_config(folder)
    where = f"checkpoint weights {folder / WEIGHTS}"
    header, _ = files.read_header(folder / WEIGHTS, "checkpoint weights")
    if build is None and cfg.get("kind") == USER:
        raise PrunewiseError(f"checkpoint {folder} holds a model of your own ({cfg['model']}): "
                             f"pass the code that builds it: load_model(folder, build=FACTORY) "
                             f"in Python, --model FILE.py:FACTORY on the command line")
    name = cfg.get("arch") or cfg.get("model")
    if build is not None or "structure" in cfg:
        model = _rebuilt(folder, cfg, build)
        alias = cfg.get("tied") or {}
        if alias != tied(model.state_dict()):
            raise PrunewiseError(f"checkpoint {folder} ties {len(alias)} tensors to others but "
                                 f"the model built for it ties {len(tied(model.state_dict()))}: "
                                 f"it was saved from another model")
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()
                  if k not in alias}
        check_against(header, shapes, where, name, exact=True)
        check_widths(cfg, {**header, **{k: header[v] for k, v in alias.items() if v in header}},
                     f"checkpoint {folder}")
        files.check_digests(folder, cfg.get("digests"), bound_files(cfg.get("structure", 0)),
                            CONFIG)
        state = files.read_tensors(folder / WEIGHTS, "checkpoint weights")
        files.check_finite(state, where)
        state.update({k: state[v] for k, v in alias.items()})
    else:
        check_against(header, dense_shapes(cfg, f"checkpoint {folder}"), where, name)
        check_widths(cfg, header, f"checkpoint {folder}")
        files.check_digests(folder, cfg.get("digests"), bound_files(cfg.get("structure", 0)),
                            CONFIG)
        state = files.read_tensors(folder / WEIGHTS, "checkpoint weights")
        files.check_finite(state, where)
        model = models.create(cfg["arch"], **_model_kwargs(cfg))
        fit_to_state(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PrunewiseError(f"checkpoint {folder} does not match architecture "
                             f"'{name}': {' '.join(first[:3])[:300]}") from None
    if cfg.get("kind") != USER:
        model.prunewise_config = {k: v for k, v in cfg.items()
                                  if k not in _NOT_KWARGS or k == "arch"}
    model.prunewise_meta = cfg.get("meta", {})
    if cfg.get("inputs"):
        model.prunewise_inputs = cfg["inputs"]
    return model


def check_widths(cfg: dict, header: dict, where: str) -> None:
    """Refuse a ``config.json`` whose layer widths are not the weights file's shapes: the two
    files come from different saves (say, a run killed between writing them)."""
    for layer, shape in (cfg.get("widths") or {}).items():
        key = f"{layer}.weight" if layer else "weight"
        entry = header.get(key) or header.get(f"{layer}.weight_hh_l0")
        if entry is None or list(entry["shape"]) != list(shape):
            got = "nothing" if entry is None else entry["shape"]
            raise PrunewiseError(f"{where}: {CONFIG} gives layer '{layer}' weights of shape "
                                 f"{list(shape)}, {WEIGHTS} holds {got}: the two files are from "
                                 f"different saves")


def load_state(path: str | Path, build: Callable[[], nn.Module]) -> nn.Module:
    """The model ``build()`` returns with the weights of a ``.safetensors`` state dict (a
    model's ``state_dict()`` saved with safetensors), its names and shapes checked first."""
    model = built(build)
    header, _ = files.read_header(path, "model weights")
    alias = {k: v for k, v in tied(model.state_dict()).items() if k not in header}
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()
              if k not in alias}
    check_against(header, shapes, f"model weights {path}", type(model).__name__, exact=True)
    state = files.read_tensors(path, "model weights")
    files.check_finite(state, f"model weights {path}")
    state.update({k: state[v] for k, v in alias.items()})   # tied tensors saved once
    model.load_state_dict(state, strict=True)
    model.prunewise_meta = {}
    return model.eval()


def built(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``, with a failure or a non-module result as a one-line PrunewiseError."""
    try:
        model = build()
    except PrunewiseError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code failed: one line
        raise PrunewiseError(f"the model factory failed: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"the model factory returned {type(model).__name__}, not a "
                             f"torch.nn.Module")
    check_layers(model)
    return model


def check_layers(model: nn.Module) -> None:
    """Refuse, in one line, what prunewise cannot save, reload or prune as plain weights: a
    model without parameters, a parametrized layer (``parametrizations.weight_norm`` /
    ``spectral_norm``, the old ``nn.utils.weight_norm`` / ``spectral_norm``) and a lazy layer
    whose shapes are not known yet."""
    from torch.nn.modules.lazy import LazyModuleMixin
    from torch.nn.utils import parametrize

    if next(iter(model.parameters()), None) is None:
        raise PrunewiseError("the model has no parameters: there is nothing to train or prune")
    for name, m in model.named_modules():
        where = f"layer '{name or type(model).__name__}' ({type(m).__name__})"
        if parametrize.is_parametrized(m):
            kinds = ", ".join(f"{t}: {type(p[0]).__name__}" for t, p in m.parametrizations.items())
            raise PrunewiseError(f"{where} is parametrized ({kinds}); prunewise saves and prunes "
                                 f"plain weights: remove the parametrization in the factory "
                                 f"(torch.nn.utils.parametrize.remove_parametrizations)")
        hooks = [type(h).__name__ for h in m._forward_pre_hooks.values()]  # noqa: SLF001
        old = [h for h in hooks if h in ("WeightNorm", "SpectralNorm")]
        if old:
            raise PrunewiseError(f"{where} has {old[0]} (torch.nn.utils.{old[0][:-4].lower()}"
                                 f"_norm); prunewise saves and prunes plain weights: remove it in "
                                 f"the factory (torch.nn.utils.remove_{old[0][:-4].lower()}_norm)")
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
            raise PrunewiseError(f"{where} is a lazy layer whose shapes are not known yet; "
                                 f"prunewise needs every weight's shape to save and reload the "
                                 f"model: give the layer its input size (e.g. nn.Conv2d / "
                                 f"nn.Linear) in the factory")


def _rebuilt(folder: Path, cfg: dict, build: Callable | None) -> nn.Module:
    """The dense model (``build()`` or the zoo's) with the folder's channel plans applied."""
    model = models.create(cfg["arch"], **_model_kwargs(cfg)) if build is None else built(build)
    count = cfg.get("structure", 0)
    if count:
        if not cfg.get("inputs"):
            raise PrunewiseError(f"{folder / CONFIG}: 'structure' needs 'inputs' (the example "
                                 f"input the plans were traced on)")
        example = example_of(cfg["inputs"])
        plans = [ChannelPlan.load(folder / STRUCTURE / str(i)) for i in range(count)]
        for plan in plans:
            model = surgery.apply(model, plan, example)
        model.prunewise_structure, model.prunewise_inputs = plans, cfg["inputs"]
    return model.eval()


def fit_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize conv / linear / norm layers in place to the shapes in ``state`` (pruned widths)."""
    for name, module in list(model.named_modules()):
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None or getattr(module, "weight", None) is None or w.shape == module.weight.shape:
            continue
        new = _resized(module, tuple(w.shape))
        if new is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _resized(m: nn.Module, shape: tuple[int, ...]) -> nn.Module | None:
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = m.groups > 1 and m.groups == m.in_channels and shape[1] == 1
        groups = shape[0] if depthwise else m.groups
        return type(m)(shape[1] * groups, shape[0], m.kernel_size, stride=m.stride,
                       padding=m.padding, dilation=m.dilation, groups=groups,
                       bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=m.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                       track_running_stats=m.track_running_stats)
    if isinstance(m, nn.GroupNorm) and shape[0] % m.num_groups == 0:
        return nn.GroupNorm(m.num_groups, shape[0], eps=m.eps, affine=m.affine)
    return None
