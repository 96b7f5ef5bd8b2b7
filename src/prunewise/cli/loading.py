"""Reading what a command works on: checkpoints and the data sets they belong to (torch and
the data loaders are imported only when a command runs)."""
from __future__ import annotations

from ..errors import PrunewiseError


def check_batch(bundle, batch_size: int, what: str) -> None:
    """Training uses full batches only: one larger than the training split takes no step."""
    if batch_size > len(bundle.train):
        raise PrunewiseError(f"{what} {batch_size} is larger than the {len(bundle.train)} "
                             f"training images of '{bundle.name}': no step would be taken")


def check_model_name(name: str) -> None:
    from .. import models

    if name not in models.names():
        raise PrunewiseError(f"unknown model '{name}'; choose one of: {', '.join(models.names())}")


def load_data(data_name, root, image_size, data_seed, meta: dict | None = None,
              seq_len: int | None = None, model=None):
    """The data bundle named on the command line, defaulting to what a checkpoint was trained
    on; text is tokenized with the tokenizer of ``model``'s HuggingFace folder, if it has one."""
    from .. import data as D, hf

    from pathlib import Path

    used = (meta or {}).get("data", {})
    language = model is not None and hf.is_causal_lm(model)
    if language and not data_name and not used.get("name"):
        raise PrunewiseError("a language model needs text: give --data text --root PATH (a .txt "
                             "file or a folder of them) or --data tokens --root FILE.safetensors")
    name = data_name or used.get("name", "digits")
    files = ("tensors", "tokens")
    if root is not None and Path(root).exists() and Path(root).is_dir() == (name in files):
        want = "a .safetensors file" if name in files else "a folder"
        raise PrunewiseError(f"--root {root}: data set '{name}' reads {want}")
    same = name == used.get("name")
    tokenizer = None
    seq_len = seq_len or (used.get("seq_len") if same else None)
    if seq_len is None and language:   # 128 tokens, or fewer when the model has fewer positions
        seq_len = min(128, hf.max_positions(model) or 128)
    if name == "text" and language:
        tokenizer = hf.tokenizer(model.prunewise_hf["folder"])
    bundle = D.load(name, root or (used.get("root") if same else None),
                    image_size=image_size or (used.get("image_size") if same else None),
                    seed=data_seed if data_seed is not None else (used.get("seed", 0) if same else 0),
                    seq_len=seq_len,
                    tokenizer=tokenizer)
    if model is not None and bundle.task == "causal_lm":
        check_language(model, bundle, tokenizer)
    return bundle


def check_language(model, bundle, tokenizer) -> None:
    """Refuse text a language model cannot read: a tokenizer or ids beyond its vocabulary, or
    sequences longer than its positions."""
    from .. import hf

    vocab, longest = hf.vocab_size(model), hf.max_positions(model)
    length = int(bundle.train.x.shape[1])
    what = "its tokenizer has" if tokenizer is not None else (
        "byte-level text has" if bundle.name == "text" else "the token ids need")
    if vocab is not None and bundle.vocab > vocab:
        raise PrunewiseError(f"the model's vocabulary has {vocab} ids but {what} {bundle.vocab}: "
                             f"they do not belong together")
    if longest is not None and length > longest:
        raise PrunewiseError(f"--seq-len {length} is longer than the model's {longest} positions")


#: Calibration sequences of a language model when --samples is not given (the field's usual 128).
LM_SAMPLES = 128


def calibration_samples(given: int | None, bundle) -> int:
    """The calibration sequences of a language model: ``given`` (refused when the training
    split has fewer), else :data:`LM_SAMPLES` or the whole split when it is smaller."""
    have = len(bundle.train)
    if given is not None and given > have:
        raise PrunewiseError(f"--samples {given}: the corpus's training split holds only {have} "
                             f"sequences of {bundle.train.x.shape[1]} tokens; give at most "
                             f"{have} or a larger corpus")
    return given if given is not None else min(LM_SAMPLES, have)


def task_of(bundle):
    """The task a data set is for: next-token prediction for text, else classification."""
    from .. import tasks

    return tasks.causal_lm() if bundle.task == "causal_lm" else tasks.classification()


def data_meta(bundle, root, seed: int) -> dict:
    out = {"name": bundle.name, "root": str(root) if root else None, "seed": seed}
    if bundle.task == "causal_lm":
        out["seq_len"] = int(bundle.train.x.shape[1])
    else:
        out["image_size"] = bundle.image_size
    return out


def check_classes(model, bundle) -> None:
    if bundle.task == "causal_lm":   # the task checks the output against the ids
        return
    if getattr(model, "prunewise_config", None) is None:  # a user model: ask its output
        from .. import utils

        import torch

        try:
            with torch.no_grad():
                out = utils.forward(model.eval(), bundle.example(1))
        except Exception as e:  # noqa: BLE001 - the user's model rejects the data: say so
            raise PrunewiseError(f"the model cannot run on data set '{bundle.name}' "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                                 f"pass the data it was made for (--data, --root)") from None
        if out.dim() != 2 or out.shape[-1] != bundle.num_classes:
            raise PrunewiseError(f"the model's output has shape {tuple(out.shape)} but data set "
                                 f"'{bundle.name}' has {bundle.num_classes} classes: it must "
                                 f"give (batch, {bundle.num_classes}) logits")
        if not out.dtype.is_floating_point:
            raise PrunewiseError(f"the model's output is {str(out.dtype).replace('torch.', '')}: "
                                 f"logits must be floating point (a loss needs them)")
        if not bool(torch.isfinite(out).all()):
            raise PrunewiseError(f"the model's output on a sample of '{bundle.name}' is not "
                                 f"finite (NaN or infinite): fix the model or its weights")
        return
    n = model.prunewise_config["num_classes"]
    if n != bundle.num_classes:
        raise PrunewiseError(f"model has num_classes={n} but data set '{bundle.name}' has "
                             f"{bundle.num_classes} classes; they must match")
    c = model.prunewise_config["in_channels"]
    if c != bundle.in_channels:
        raise PrunewiseError(f"model has in_channels={c} but data set '{bundle.name}' has "
                             f"{bundle.in_channels} channels; they must match")
    if bundle.raw:
        check_images(model, bundle)


def check_images(model, bundle) -> None:
    """A zoo model takes one float32 image tensor (batch x channels x height x width): refuse,
    in one line, stored inputs it cannot take (other dtypes, other ranks, named inputs)."""
    import torch

    from .. import utils

    x = bundle.example(2)
    where = f"data set '{bundle.name}'"
    if isinstance(x, dict):
        raise PrunewiseError(f"{where} holds named inputs ({', '.join(sorted(x))}); a zoo model "
                             f"takes one image tensor: store it as train.x / test.x")
    if x.dtype != torch.float32:
        raise PrunewiseError(f"{where} stores its inputs as {str(x.dtype).replace('torch.', '')}; "
                             f"a zoo model takes float32 images (scaled as it was trained): "
                             f"store them as float32 (x.float(), scaled to your range)")
    if x.dim() != 4:
        raise PrunewiseError(f"{where} has samples of shape {list(x.shape[1:])}; a zoo model "
                             f"takes images of shape [channels, height, width]")
    try:
        with torch.no_grad():
            utils.forward(model.eval(), x)
    except Exception as e:  # noqa: BLE001 - the images do not suit this architecture
        raise PrunewiseError(f"model '{model.prunewise_config['arch']}' cannot take the "
                             f"{list(x.shape[1:])} samples of {where} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:160]})") from None


def load_checkpoint(checkpoint, data_name, root, image_size, data_seed, factory=None,
                    seq_len=None):
    """A checkpoint's model and the data it is used with (by default, what it was trained on).
    ``factory`` (``--model``): the user's code that builds the model; CHECKPOINT is then a
    checkpoint folder of that model or a ``.safetensors`` state dict (with ``hf:DIR``, also
    the HuggingFace folder itself)."""
    model = load_model(checkpoint, factory)
    bundle = load_data(data_name, root, image_size, data_seed, model.prunewise_meta, seq_len,
                       model)
    if "data" not in model.prunewise_meta:   # a model of its own: the data it is used with
        model.prunewise_meta = {**model.prunewise_meta,
                                "data": data_meta(bundle, root, data_seed or 0)}
    check_classes(model, bundle)
    if factory is not None and getattr(model, "prunewise_inputs", None) is None:
        from .. import checkpoints

        model.prunewise_inputs = checkpoints.input_spec(bundle.example(1))  # saved with it
    return model, bundle


def load_model(checkpoint, factory=None):
    """A zoo checkpoint folder, or with ``factory`` (``--model SPEC``) a user model's folder or
    a ``.safetensors`` state dict of the model ``factory`` builds."""
    from pathlib import Path

    from .. import checkpoints

    from .. import hf

    path = Path(checkpoint)
    if hf.is_folder(path) and (factory is None or str(factory).startswith(hf.PREFIX)):
        if factory is not None:
            hf.folder_of(str(factory))
        return hf.load(path)   # a HuggingFace folder itself
    build = None if factory is None else load_factory(factory)
    if build is not None and path.suffix == ".safetensors" and not path.is_dir():
        return checkpoints.load_state(path, build)
    return checkpoints.load_model(checkpoint, build=build)


def load_factory(spec: str):
    """``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` -> that function (called later with
    no arguments to build the model). Only code the user names on the command line runs."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from .. import hf

    if str(spec).startswith(hf.PREFIX):
        return hf.factory(str(spec))
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise PrunewiseError(f"--model must be FILE.py:FUNCTION or package.module:FUNCTION, "
                             f"got {spec!r}")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise PrunewiseError(f"--model: file not found: {target}")
            name = f"prunewise_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.path.insert(0, str(path.resolve().parent))  # its own imports of sibling files
            try:
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.resolve().parent))
        else:
            module = importlib.import_module(target)
    except PrunewiseError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's import failed: one line
        raise PrunewiseError(f"--model {spec}: importing {target} failed: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PrunewiseError(f"--model {spec}: {target} has no function '{attr}'")
    return fn


def example_input(model, size: int):
    return example_input_of(model.prunewise_config["in_channels"], size)


def user_example(model, in_channels: int, size: int | None):
    """A user model's example input: the one its checkpoint recorded (a structurally pruned
    model), else images of ``in_channels`` x ``size`` x ``size`` (32 when not given)."""
    from .. import checkpoints, hf

    spec = getattr(model, "prunewise_inputs", None)
    if spec and size is None:
        return checkpoints.example_of(spec)
    if hf.is_causal_lm(model):   # token ids; the size is the sequence length
        import torch

        return torch.zeros(1, size or min(128, hf.max_positions(model) or 128), dtype=torch.long)
    return example_input_of(in_channels, size or 32)


def example_input_of(in_channels: int, size: int):
    """A zero image batch of one, refused when one sample would exceed the readers' bound."""
    import math

    import torch

    from ..data.core import MAX_SAMPLE_ELEMENTS

    if in_channels * size * size > MAX_SAMPLE_ELEMENTS:
        raise PrunewiseError(f"an input of {in_channels}x{size}x{size} is more than "
                             f"{MAX_SAMPLE_ELEMENTS:,} values; with {in_channels} channels use an "
                             f"input size of at most "
                             f"{math.isqrt(MAX_SAMPLE_ELEMENTS // in_channels)}")
    return torch.zeros(1, in_channels, size, size)
