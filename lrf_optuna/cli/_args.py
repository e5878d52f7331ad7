"""Arguments several ``lrf-optuna`` subcommands share."""

from __future__ import annotations

import argparse

from lrf_optuna.errors import UserError

STORAGE_HELP = ("Optuna storage URL (default: sqlite:///studies/<study-name>.db; "
                 "postgresql://... for many workers)")


def add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a reference model name (lenet5, vgg_small, resnet20, "
                        "mobilenetv2_small: trained on the dataset or loaded from the model "
                        "cache) or a path to a trained .keras file")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="'fashion-mnist' (offline Debian copy, LRF_OPTUNA_DATA or keras' "
                        "downloader) or a .npz file with x_train, y_train, x_test, y_test "
                        "(uint8 images are scaled to [0, 1]) (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the Fashion-MNIST idx files")
    p.add_argument("--calibration-size", type=int, default=512,
                   help="calibration images drawn (stratified) from the training split "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, training and "
                   "the sampler (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the training data held out for validation, which "
                        "decides everything (default: 2,000 images, at least 10 %% and at "
                        "most 25 %%). Your model must not have trained on these images: "
                        "train it on the same split (lrf_optuna.data.prepare_splits)")


def add_study_args(p: argparse.ArgumentParser, *, need_name: bool = False,
                    name_help: str = "study name (default: the model name)") -> None:
    p.add_argument("--study-name", required=need_name, default=None, help=name_help)
    p.add_argument("--storage", default=None, help=STORAGE_HELP)


def add_quantize_args(p: argparse.ArgumentParser, what: str) -> None:
    from lrf_optuna.deploy.convert import DEFAULT_REPRESENTATIVE, QUANTIZE_MODES

    p.add_argument("--quantize", choices=list(QUANTIZE_MODES), default="none",
                   help=f"{what}: none (float32), dynamic (int8 weights, float "
                        "activations), float16, int8 (full integer, calibrated on "
                        f"{DEFAULT_REPRESENTATIVE} training images), int8_fc_per_tensor "
                        "(int8 with one scale per FULLY_CONNECTED weight tensor instead of "
                        "one per output channel: smaller files of low-rank models) "
                        "(default: %(default)s)")
    p.add_argument("--int8-io", action="store_true",
                   help="with a full-integer --quantize: int8 input and output tensors "
                        "(default: "
                        "float32 input and output around the integer graph)")


def add_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", choices=["params", "bytes"], default="params",
                   help="what the memory objective counts: parameters, or the bytes the "
                        "weights take in the .tflite file at --quantize's precision (int8 "
                        "weights + per-channel scales + int32 biases for int8) "
                        "(default: %(default)s)")


def check_int8_io(args: argparse.Namespace) -> None:
    from lrf_optuna.deploy.convert import is_integer

    if getattr(args, "int8_io", False) and not is_integer(args.quantize):
        raise UserError("--int8-io needs --quantize int8 or int8_fc_per_tensor")


# -- search / show ---------------------------------------------------------------------------
