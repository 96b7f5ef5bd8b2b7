"""HuggingFace causal language models from a local folder, offline (``--model hf:DIR``).

* :func:`load` -- the model of a HuggingFace folder (``config.json`` + ``model.safetensors``,
  sharded or not) through the auto classes, never the hub and never a pickle
  (``pytorch_model.bin`` is refused), in float32, with its key-value cache off (pruning
  runs every calibration batch once; ``generate`` turns it on for itself).
* :func:`factory` -- the same architecture from the folder's config alone (what reloads a
  prunewise checkpoint of a pruned HF model).
* :func:`tokenizer` -- the folder's tokenizer, or None when it has none (text is then read
  as bytes).
* :func:`save` -- a (masked) model back into a HuggingFace folder ``from_pretrained`` reads.

GPT-2-style ``Conv1D`` layers (a linear layer that stores its weight transposed) become
``nn.Linear`` layers with the same function when a model is loaded, so every method, the
repair and the mask scope see one kind of linear layer; :func:`save` turns them back. Weights
tied between modules (input and output embeddings) stay one tensor.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from . import device
from .errors import PrunewiseError

PREFIX = "hf:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def is_folder(path) -> bool:
    """Whether ``path`` is a HuggingFace model folder (a ``config.json`` naming a
    ``model_type``), not a prunewise checkpoint."""
    cfg = Path(path) / "config.json"
    try:
        if not cfg.is_file() or cfg.stat().st_size > 1 << 22:
            return False   # the checkpoint reader says what is wrong with it
        head = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(head, dict) and "model_type" in head and "format" not in head


def folder_of(spec: str) -> Path:
    """The folder of a ``hf:DIR`` spec, checked: it exists and holds a ``config.json``."""
    path = Path(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec)
    if not path.is_dir():
        raise PrunewiseError(f"--model {PREFIX}{path}: folder not found")
    if not (path / "config.json").is_file():
        raise PrunewiseError(f"--model {PREFIX}{path}: no config.json (not a HuggingFace model "
                             f"folder)")
    if not is_folder(path):
        raise PrunewiseError(f"--model {PREFIX}{path}: config.json names no model_type (not a "
                             f"HuggingFace model config)")
    return path


def _quiet():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _config(path: Path):
    transformers = _quiet()
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                       trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - a config the auto classes cannot read: one line
        raise PrunewiseError(f"{path}/config.json: not a configuration transformers can build "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def _ready(model: nn.Module, path: Path) -> nn.Module:
    """What every loaded model gets: float32, eval mode, its cache off, linear layers only."""
    model = model.float().eval()
    model.prunewise_hf = {"folder": str(path), "use_cache": getattr(model.config, "use_cache",
                                                                      None)}
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    model.prunewise_hf["transposed"] = linearize(model)
    model.prunewise_meta = {"model": f"{PREFIX}{path}"}
    return model


def factory(spec: str):
    """``hf:DIR`` -> a function building the folder's architecture from its config (random
    weights), ready for a prunewise checkpoint's weights."""
    path = folder_of(spec)

    def build() -> nn.Module:
        config = _config(path)
        transformers = _quiet()
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except Exception as e:  # noqa: BLE001
            raise PrunewiseError(f"{path}: transformers cannot build a causal language model "
                                 f"from this config ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:160]})") from None
        return _ready(model, path)
    return build


def load(path) -> nn.Module:
    """The causal language model of HuggingFace folder ``path`` with its weights (module
    notes); a missing or unreadable file is one PrunewiseError line."""
    path = folder_of(str(path))
    config = _config(path)
    weights = sorted(p.name for p in path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        extra = (f" ({', '.join(pickles)} is a pickle, which prunewise never loads: convert it "
                 f"with save_pretrained(..., safe_serialization=True))" if pickles else "")
        raise PrunewiseError(f"{path}: no .safetensors weights{extra}")
    transformers = _quiet()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), config=config, local_files_only=True, use_safetensors=True,
            trust_remote_code=False, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - one line, whatever went wrong inside transformers
        raise PrunewiseError(f"{path}: loading the model failed ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
    return _ready(model, path)


def tokenizer(path):
    """The tokenizer of HuggingFace folder ``path``, or None when the folder has none."""
    path = Path(str(path)[len(PREFIX):] if str(path).startswith(PREFIX) else path)
    if not any((path / n).is_file() for n in TOKENIZER_FILES):
        return None
    transformers = _quiet()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise PrunewiseError(f"{path}: its tokenizer cannot be loaded ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:160]})") from None


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a HuggingFace causal language model (it can ``generate``)."""
    return (hasattr(model, "config") and hasattr(model, "generate")
            and type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")))


def vocab_size(model: nn.Module) -> int | None:
    """The vocabulary of a language model: its input embedding's rows (None when it has none)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else None


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence a model's config allows (None when it says nothing)."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# ---- structurally pruned models --------------------------------------------------------------

#: Config fields that hold the width of every layer's MLP, by family.
MLP_FIELDS = ("intermediate_size", "n_inner", "ffn_dim", "decoder_ffn_dim")


def pruned_config(model: nn.Module):
    """A copy of ``model``'s config that describes its structurally pruned widths, when one
    config can: every attention layer kept the same number of query heads (written as
    ``num_attention_heads``, with ``head_dim`` set explicitly: only for families whose config
    has ``head_dim``), and every other pruned group (the MLPs) the same width, written to the
    config's MLP field (:data:`MLP_FIELDS`) when the group started at that width. Anything else
    is a PrunewiseError naming what differs; such a model saves as a prunewise checkpoint."""
    from .layers import attention_heads

    config = copy.deepcopy(model.config)
    heads = attention_heads(model)
    counts = sorted({i["heads"] for i in heads.values()})
    if len(counts) > 1:
        raise PrunewiseError(f"the pruned model keeps {counts} attention heads in different "
                             f"layers, and a HuggingFace config holds one count: save it as a "
                             f"prunewise checkpoint")
    if counts and counts[0] != config.num_attention_heads:
        if "head_dim" not in config.to_dict():
            raise PrunewiseError(f"the pruned model keeps {counts[0]} of "
                                 f"{config.num_attention_heads} attention heads, and a "
                                 f"{config.model_type} config derives the head size from the "
                                 f"head count: save it as a prunewise checkpoint")
        config.num_attention_heads = counts[0]
        config.head_dim = next(iter(heads.values()))["head_dim"]
    first, last = {}, {}
    for plan in model.prunewise_structure:
        for name, kept in plan.keep.items():
            if name not in heads:
                first.setdefault(name, plan.sizes[name])
                last[name] = int(kept.numel())
    field = next((f for f in MLP_FIELDS if f in config.to_dict()), None)  # GPT-2: n_inner None
    widths, was = sorted(set(last.values())), getattr(config, field or "", None)
    if last and (field is None or len(widths) > 1 or len(set(first.values())) > 1
                 or (was is not None and set(first.values()) != {was})):
        raise PrunewiseError(f"the pruned model's MLP widths ({widths}) cannot be written into "
                             f"one {field or 'MLP width'} of its HuggingFace config: save it as a "
                             f"prunewise checkpoint")
    if last:
        setattr(config, field, widths[0])
    return config


def _check_reload(model: nn.Module, folder: Path) -> None:
    """Load the folder just written with ``from_pretrained`` and compare its logits with
    ``model``'s; a mismatch removes the folder and is a PrunewiseError."""
    import shutil

    x = torch.arange(8).remainder(vocab_size(model) or 2).unsqueeze(0).to(device.of(model))
    was = model.training
    try:
        back = load(folder).to(x.device)
        model.eval()
        with torch.no_grad():
            same = torch.allclose(back(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
        problem = "" if same else "gives different outputs"
    except PrunewiseError as e:
        problem = f"does not load ({e})"
    finally:
        model.train(was)
    if problem:
        shutil.rmtree(folder, ignore_errors=True)
        raise PrunewiseError(f"the HuggingFace folder of this pruned model {problem}; nothing "
                             f"was written: save it as a prunewise checkpoint")


# ---- GPT-2's Conv1D ----------------------------------------------------------------------------

def _is_conv1d(m: nn.Module) -> bool:
    """A linear layer that stores its weight transposed (in x out) and has ``nf``: HF's
    ``Conv1D`` (GPT-2, GPT-J's ancestors), recognised by its structure."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, nn.Parameter) and w.dim() == 2
            and getattr(m, "nf", None) == w.shape[1])


def linearize(model: nn.Module) -> list[str]:
    """Replace every ``Conv1D`` of ``model`` by an ``nn.Linear`` computing the same function
    (weight transposed); returns their names."""
    names = []
    for name, m in list(model.named_modules()):
        if not _is_conv1d(m):
            continue
        lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.detach().T)
            if m.bias is not None:
                lin.bias.copy_(m.bias.detach())
        lin.to(m.weight.device)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, lin)
        names.append(name)
    return names


def save(model: nn.Module, folder) -> Path:
    """Write ``model`` (loaded by :func:`load` or built by :func:`factory`, masked or not) as a
    HuggingFace folder: ``save_pretrained`` with its ``Conv1D`` weights transposed back, its
    cache setting restored, and the source folder's tokenizer files copied along."""
    import shutil

    info = getattr(model, "prunewise_hf", None)
    if info is None or not hasattr(model, "save_pretrained"):
        raise PrunewiseError("only a HuggingFace model (loaded with --model hf:DIR) can be saved "
                             "as a HuggingFace folder")
    folder = Path(folder)
    config = pruned_config(model) if getattr(model, "prunewise_structure", None) else model.config
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in info.get("transposed", []):
        state[f"{name}.weight"] = state[f"{name}.weight"].T.contiguous()
    old, kept = getattr(model.config, "use_cache", None), model.config
    model.config = config
    model.config.use_cache = info.get("use_cache", old)
    try:
        _quiet()
        model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
    finally:
        model.config = kept
        model.config.use_cache = old
    if config is not kept:
        _check_reload(model, folder)
    src = Path(info["folder"])
    for p in src.iterdir() if src.is_dir() else []:
        if p.is_file() and (p.name in TOKENIZER_FILES or p.name.startswith(("special_tokens",
                                                                            "merges", "added"))):
            shutil.copyfile(p, folder / p.name)
    return folder
