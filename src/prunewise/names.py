"""The fixed names the command line offers, kept free of torch so that ``prunewise --help``
needs none: data sets, optimizers, mixed-precision modes. Their modules read them from here."""

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "fashion-mnist", "mnist", "tensors", "text",
            "tokens")
OPTIMIZERS = ("sgd", "adam")
AMP = ("bf16", "fp16")
