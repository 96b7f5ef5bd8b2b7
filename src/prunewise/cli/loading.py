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


def load_data(data_name, root, image_size, data_seed, meta: dict | None = None):
    """The data bundle named on the command line, defaulting to what a checkpoint was trained on."""
    from .. import data as D

    used = (meta or {}).get("data", {})
    name = data_name or used.get("name", "digits")
    same = name == used.get("name")
    return D.load(name, root or (used.get("root") if same else None),
                  image_size=image_size or (used.get("image_size") if same else None),
                  seed=data_seed if data_seed is not None else (used.get("seed", 0) if same else 0))


def data_meta(bundle, root, seed: int) -> dict:
    return {"name": bundle.name, "root": str(root) if root else None,
            "image_size": bundle.image_size, "seed": seed}


def check_classes(model, bundle) -> None:
    n = model.prunewise_config["num_classes"]
    if n != bundle.num_classes:
        raise PrunewiseError(f"model has num_classes={n} but data set '{bundle.name}' has "
                             f"{bundle.num_classes} classes; they must match")
    c = model.prunewise_config["in_channels"]
    if c != bundle.in_channels:
        raise PrunewiseError(f"model has in_channels={c} but data set '{bundle.name}' has "
                             f"{bundle.in_channels} channels; they must match")


def load_checkpoint(checkpoint, data_name, root, image_size, data_seed):
    """A checkpoint's model and the data it is used with (by default, what it was trained on)."""
    from .. import checkpoints

    model = checkpoints.load_model(checkpoint)
    bundle = load_data(data_name, root, image_size, data_seed, model.prunewise_meta)
    check_classes(model, bundle)
    return model, bundle


def example_input(model, size: int):
    import torch

    return torch.zeros(1, model.prunewise_config["in_channels"], size, size)
