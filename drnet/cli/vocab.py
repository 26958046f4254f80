"""The one flag vocabulary of every ``drnet`` command, and the parser that enforces it.

A flag means the same thing in every command that has it (``--model``, ``--weights``,
``--pretrained``, ``--num-classes``, ``--class-names``, ``-o/--output-dir``, ``-b/--batch-size``,
``-j/--workers``, ``--device``, ``--no-progress``, ``--no-fast``, ``DATA``/``-d/--data-dir``,
``--json``), so every command adds it through one helper here. Spellings of the original DRN
scripts and of earlier drnet versions stay accepted as hidden aliases: a second ``add_argument``
with the same ``dest``, no help and ``default=SUPPRESS`` so that it never overwrites the
canonical option's default. ``tests/test_cli_vocabulary.py`` walks every parser to hold this.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from drnet.atomic import atomic_write_text, json_text
from drnet.cli import (
    float_in,
    int_in,
    list_of,
    non_negative_int,
    positive_int,
    report_failures,
)
from drnet.constants import BACKEND_CHOICES, DTYPE_CHOICES
from drnet.tasks.common import InferenceOptions

SUPPRESS = argparse.SUPPRESS

# The inference fast path, as every eval/predict command describes it.
FAST_HELP = "plain eager model instead of the inference fast path (BN folding, fused convs)"

# How every predict command names its outputs (drnet.data.images.relative_names, unique_names)
NAMES_HELP = (
    "Output names: each input's path relative to the deepest folder common to all inputs, "
    "without its extension (d1/x.jpg and d2/x.png -> d1/x, d2/x); inputs that still share a "
    "name (x.jpg and x.png in one folder) get -2, -3, ... in input order, so no output is "
    "overwritten."
)


def int_list(text: str) -> tuple[int, ...]:
    """An argparse ``type``: comma-separated integers such as ``8,16,32``."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 8,16,32: {text!r}") from None


DEVICES = "auto, cpu, cuda, cuda:N"


def device(text: str) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``mps`` and the like are
    refused in one usage line instead of failing inside torch)."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise argparse.ArgumentTypeError(f"expected one of {DEVICES}, got {text!r}")


#: ``--channels``: the widths of the 8 levels of a DRN.
channel_widths = list_of(int_in(1, 4096), count=8)


def shown_default(action: argparse.Action) -> str | None:
    """The default ``--help`` shows for ``action`` (``None``: none shown), as a user would type
    it: a tuple is ``a,b`` for one comma-separated value, ``a b`` for an option taking several
    values (``nargs``). ``tests/test_hostile_inputs_24.py`` parses every one back."""
    default = action.default
    if default in (None, False, "", (), []) or default is SUPPRESS:
        return None
    if "default" in (action.help or ""):
        return None
    if not action.option_strings and action.nargs not in ("?", "*"):
        return None
    if isinstance(default, (tuple, list)):
        several = isinstance(action.nargs, int) or action.nargs in ("+", "*")
        return (" " if several else ",").join(map(str, default))
    return str(default)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already speaks of its
    default or there is nothing to show (``None``, ``False``, an empty value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = shown_default(action)
        if shown is None:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, _PretrainedOrPath):
            return ""  # shown as the flag it is; the old PATH form stays unadvertised
        return super()._format_args(action, default_metavar)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _PretrainedOrPath):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's and epilog's line breaks."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that shows defaults in help and checks "one of these spellings is
    required" (a positional ``DATA`` or its option ``--data-dir``) after parsing.

    Sub-commands inherit the class (``add_subparsers`` makes parsers of the parent's type).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.required_values: list[tuple[str, str]] = []

    def require(self, dest: str, names: str) -> None:
        """Make ``dest`` required, however it was spelled; ``names`` is shown in the error."""
        self.required_values.append((dest, names))

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        for dest, names in self.required_values:
            if getattr(namespace, dest, None) is None:
                self.error(f"the following arguments are required: {names}")
        return namespace, extras


Container = argparse.ArgumentParser | argparse._ArgumentGroup


def hidden(parser: Container, *flags: str, dest: str, **kwargs: Any) -> argparse.Action:
    """An old spelling of option ``dest``: accepted, never shown, never sets a default."""
    return parser.add_argument(*flags, dest=dest, help=SUPPRESS, default=SUPPRESS, **kwargs)


# -- model and weights ----------------------------------------------------------------------------


def add_model(parser: Container, default: str | None = None, help: str | None = None) -> None:
    """``--model NAME`` (hidden: ``--arch``, the original scripts' spelling)."""
    parser.add_argument(
        "--model",
        default=default,
        metavar="NAME",
        help=help or "architecture name (`drnet models` lists them)",
    )
    hidden(parser, "--arch", dest="model", metavar="NAME")


def add_weights(parser: Container, help: str, required: bool = False) -> None:
    """``--weights PATH``: a run directory, a drnet checkpoint or an official ``.pth``
    (hidden: ``--checkpoint``). ``required`` is checked after parsing so the alias counts."""
    parser.add_argument("--weights", metavar="PATH", help=help)
    hidden(parser, "--checkpoint", dest="weights", metavar="PATH")
    if required:
        _parser_of(parser).require("weights", "--weights")


class _PretrainedOrPath(argparse.Action):
    """``--pretrained`` alone: the published weights; ``--pretrained PATH`` (old ``segment``
    spelling): initialise from PATH, exactly as ``--weights PATH``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is True:
            namespace.pretrained = True
        else:
            namespace.weights = values


def add_pretrained(parser: Container, help: str, accepts_path: bool = False) -> None:
    """``--pretrained``: a flag, the published weights. ``accepts_path`` keeps the old
    ``segment --pretrained PATH`` working (it then means ``--weights PATH``)."""
    if not accepts_path:
        parser.add_argument("--pretrained", action="store_true", help=help)
        return
    parser.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        action=_PretrainedOrPath,
        help=help,
    )


def add_num_classes(parser: Container, help: str, old_spellings: Sequence[str] = ()) -> None:
    """``--num-classes N``, a count (hidden: ``old_spellings``, e.g. ``-c``/``--classes``)."""
    parser.add_argument("--num-classes", type=positive_int, metavar="N", help=help)
    if old_spellings:
        hidden(parser, *old_spellings, dest="num_classes", type=positive_int, metavar="N")


def add_class_names(parser: Container) -> None:
    """``--class-names FILE``: class names in index order (hidden: ``classify --classes``)."""
    parser.add_argument(
        "--class-names",
        metavar="FILE",
        help="class names, one per line (or a JSON list), in index order",
    )
    hidden(parser, "--classes", dest="class_names", metavar="FILE")


def add_channels(parser: Container) -> None:
    """``--channels W1,...,W8``: per-level widths (tiny networks for tests and the demo)."""
    parser.add_argument(
        "--channels",
        type=channel_widths,
        metavar="W1,...,W8",
        help="per-level widths, e.g. 8,16,32,64,128,128,128,128 for a tiny DRN-C/D",
    )


# -- data and output ------------------------------------------------------------------------------


def add_data(
    parser: Parser,
    help: str,
    required: bool = True,
    old_spellings: Sequence[str] = (),
    metavar: str = "DATA",
    positional: bool = True,
) -> None:
    """The data a command reads: an optional positional ``DATA`` or ``-d/--data-dir``, the same
    value (``dest="data_dir"``). ``old_spellings``: hidden options, e.g. ``quantize --data``.
    ``positional=False`` where the positionals are something else (``segment predict INPUT``)."""
    if positional:
        # default=SUPPRESS: an absent positional must not overwrite a given --data-dir
        parser.add_argument("data_dir", nargs="?", metavar=metavar, default=SUPPRESS, help=help)
    parser.add_argument(
        "-d",
        "--data-dir",
        dest="data_dir",
        metavar=metavar,
        help=f"same as {metavar}" if positional else help,
    )
    if old_spellings:
        hidden(parser, *old_spellings, dest="data_dir", metavar=metavar)
    if required:
        parser.require("data_dir", f"{metavar} (or -d/--data-dir)")


def add_output_dir(
    parser: Container, default: str | None, help: str = "where to write", old: Sequence[str] = ()
) -> None:
    """``-o/--output-dir DIR`` (hidden: ``old``, e.g. ``--out``, ``--save_path``)."""
    parser.add_argument("-o", "--output-dir", default=default, metavar="DIR", help=help)
    if old:
        hidden(parser, *old, dest="output_dir", metavar="DIR")


#: What a predict command's --overwrite does (drnet.engine.predict_folder has the rule).
PREDICT_OVERWRITE_HELP = (
    "write into an -o/--output-dir that holds another predict's results (its predict.json "
    "names another command or other inputs), deleting the files that predict wrote; without "
    "it such a folder is refused. The same command on the same inputs needs no flag"
)


def add_predict_overwrite(parser: Container) -> None:
    """``--overwrite`` of the predict commands (see :data:`PREDICT_OVERWRITE_HELP`)."""
    parser.add_argument("--overwrite", action="store_true", help=PREDICT_OVERWRITE_HELP)


def add_json(parser: Container, what: str) -> None:
    """``--json [PATH]``: write ``what`` as JSON to PATH; with no PATH (or ``-``) print it on
    stdout instead of the text output (the older flag form of ``--json``)."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help=f"also write {what} as JSON to PATH; '--json' alone (or PATH '-') prints the JSON "
        "on stdout instead of the text",
    )


def write_json(data: Any, destination: str) -> Path | None:
    """Write ``data`` for ``--json``: to the file ``destination`` (returned), or, for ``-``, on
    stdout (returns ``None``: the command then prints nothing else)."""
    text = json_text(data)  # strict JSON: NaN and infinities are null
    if destination == "-":
        print(text, end="")
        return None
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


# -- running --------------------------------------------------------------------------------------


def add_batch_size(parser: Container, default: int, help: str = "images per batch") -> None:
    """``-b/--batch-size N`` (hidden: ``--batch``)."""
    parser.add_argument(
        "-b", "--batch-size", type=positive_int, default=default, metavar="N", help=help
    )
    hidden(parser, "--batch", dest="batch_size", type=positive_int, metavar="N")


def add_workers(parser: Container, default: int, help: str = "data-loading processes") -> None:
    """``-j/--workers N``."""
    parser.add_argument(
        "-j", "--workers", type=non_negative_int, default=default, metavar="N", help=help
    )


def add_device(parser: Container) -> None:
    """``--device``: auto (CUDA when present), cpu, cuda, cuda:N."""
    parser.add_argument(
        "--device", type=device, default="auto", help="auto (CUDA when present), cpu, cuda:N"
    )


def add_max_pixels(parser: Container) -> None:
    """``--max-pixels N``: the pixel budget of one input image (:mod:`drnet.data.images`); the
    command line applies it for the length of the command."""
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        metavar="N",
        help="refuse images with more pixels (width x height) than this, before decoding them "
        "(default: $DRNET_MAX_PIXELS, else 89478485, PIL's limit)",
    )


def add_no_progress(parser: Container, quiet_alias: bool = False) -> None:
    """``--no-progress`` (hidden: ``--quiet``, where a command spelled it so)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    if quiet_alias:
        hidden(parser, "--quiet", dest="no_progress", action="store_true")


def add_no_fast(parser: Container, help: str = FAST_HELP) -> None:
    """``--no-fast``: the plain eager model instead of the inference fast path (and
    ``--backend``, what runs that fast path)."""
    parser.add_argument("--no-fast", action="store_true", help=help)
    add_backend(parser)


BACKEND_HELP = (
    "what runs the inference fast path: auto measures torch, ONNX Runtime and OpenVINO (where "
    "installed) on this machine once and keeps the fastest (never one measured slower than "
    "eager with BatchNorm folded); torch measures only torch's paths; onnxruntime/openvino use "
    "that backend (default: $DRNET_BACKEND, else auto)"
)


class _BackendAction(argparse.Action):
    """Stores the value and sets ``$DRNET_BACKEND``, where the library reads it
    (:func:`drnet.speed.inference.fast_inference`), for the length of the command."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        os.environ["DRNET_BACKEND"] = str(values)


def add_backend(parser: Container, help: str = BACKEND_HELP) -> None:
    """``--backend auto|torch|onnxruntime|openvino`` (reaches the library as $DRNET_BACKEND)."""
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, action=_BackendAction, default=None, help=help
    )


DTYPE_HELP = (
    "what the network computes in: bfloat16 runs at about twice the float32 speed on CPUs with "
    "native bf16 (avx512_bf16/AMX) and on GPUs, with labels within 0.5%% of float32; where the "
    "device has no native bf16 a bfloat16 request runs in float32 with a note; auto: bfloat16 "
    "where native, else float32"
)


def add_dtype(parser: Container, default: str = "float32", help: str = DTYPE_HELP) -> None:
    """``--dtype auto|float32|bfloat16``: inference precision (see
    :func:`drnet.engine.precision.inference_dtype`)."""
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=default, help=f"{help} (default: {default})"
    )


def _parser_of(container: Container) -> Parser:
    """The parser behind an argument group (groups forward ``add_argument`` to it)."""
    parser = getattr(container, "_drnet_parser", container)
    if not isinstance(parser, Parser):
        raise TypeError(f"expected a drnet.cli.vocab.Parser, got {type(parser).__name__}")
    return parser


def group(parser: Parser, title: str) -> argparse._ArgumentGroup:
    """``parser.add_argument_group(title)`` that remembers its parser (for ``require``)."""
    new = parser.add_argument_group(title)
    new._drnet_parser = parser  # type: ignore[attr-defined]
    return new


__all__ = [
    "FAST_HELP",
    "HelpFormatter",
    "Parser",
    "RawDescriptionHelpFormatter",
    "add_batch_size",
    "add_channels",
    "add_class_names",
    "add_classifier_model",
    "add_data",
    "add_device",
    "add_inference_options",
    "add_json",
    "add_max_pixels",
    "add_model",
    "add_no_fast",
    "add_no_progress",
    "add_num_classes",
    "add_output_dir",
    "add_pretrained",
    "add_running",
    "add_weights",
    "add_workers",
    "finish",
    "group",
    "hidden",
    "image_inputs",
    "inference_options",
    "predict_output",
    "int_list",
    "write_json",
]


def load_from_args(args: argparse.Namespace, task: str | None, default_model: str | None = None):
    """The model and its card for the model options of a parsed command line (``--weights``,
    ``--model``, ``--pretrained``, ``--num-classes``, ``--channels``, ``--class-names``, and the
    eval sizes ``--crop-size``/``--resize-size`` where the command has them), through
    :func:`drnet.models.loading.load_model`."""
    from drnet.models.loading import load_model, read_class_names

    class_names = getattr(args, "class_names", None)
    model, card = load_model(
        args.weights,
        model=args.model,
        pretrained=bool(getattr(args, "pretrained", False)),
        task=task,
        num_classes=getattr(args, "num_classes", None),
        channels=getattr(args, "channels", None),
        class_names=read_class_names(class_names) if class_names else None,
        default_model=default_model,
    )
    card = card.with_eval_size(getattr(args, "crop_size", None), getattr(args, "resize_size", None))
    return model, card


def model_from_args(args: argparse.Namespace, default_model: str = "drn_d_22"):
    """For tools that also run on untrained models (export, benchmark): the model of
    ``--weights``/``--pretrained`` (its task and architecture from the run), else a randomly
    initialised ``--model`` for ``--task`` (default segmentation, 19 or 1000 classes)."""
    from drnet.models.loading import ModelCard, build_model

    task = args.task or ("segmentation" if not args.weights else None)
    if args.weights or getattr(args, "pretrained", False):
        model, _ = load_from_args(args, task, default_model)
        return model
    card = ModelCard(
        model=args.model or default_model,
        num_classes=args.num_classes or (19 if task == "segmentation" else 1000),
        task=task,
        channels=getattr(args, "channels", None),
    )
    return build_model(card)


# -- running a task ------------------------------------------------------------------------------


def add_inference_options(
    parser: Parser, workers: int, amp: bool = True, title: str = "running"
) -> argparse._ArgumentGroup:
    """The option group of :class:`drnet.tasks.common.InferenceOptions`, the same in every
    command that runs a task: ``-j/--workers``, ``--device``, ``--max-pixels``, ``--amp``
    (where the command has it), ``--no-progress``, ``--no-fast``, ``--dtype``. Returns the
    group (a command adds its own running options to it)."""
    g = group(parser, title)
    add_workers(g, workers)
    add_device(g)
    add_max_pixels(g)
    if amp:
        g.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    add_no_progress(g)
    add_no_fast(g)
    add_dtype(g)
    return g


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The :class:`drnet.tasks.common.InferenceOptions` of a parsed command line (the options
    of :func:`add_inference_options`; absent ones take the defaults)."""
    return InferenceOptions(
        device=getattr(args, "device", "auto"),
        dtype=getattr(args, "dtype", None),
        fast=not getattr(args, "no_fast", False),
        amp=bool(getattr(args, "amp", False)),
        workers=getattr(args, "workers", 0),
        progress=not getattr(args, "no_progress", False),
    )


@contextlib.contextmanager
def predict_output(
    args: argparse.Namespace, command: str, inputs: Sequence[str | Path]
) -> Iterator[Path]:
    """``-o/--output-dir`` of a predict command claimed for the ``with`` block
    (:func:`drnet.engine.predict_folder.predict_folder`, with ``--overwrite``)."""
    from drnet.engine.predict_folder import predict_folder

    with predict_folder(args.output_dir, command, inputs, overwrite=args.overwrite) as folder:
        yield folder


def image_inputs(inputs: Sequence[str]) -> list[Path]:
    """The image files of ``INPUT...`` (files, and folders searched recursively)."""
    from drnet.data.classification import list_images

    return list_images(inputs)


def finish(result: Any, output_dir: str | Path, written: str | Path | None = None) -> int:
    """Print a task result's summary lines and ``wrote WRITTEN``; for a prediction, log the
    inputs that failed (:func:`drnet.cli.report_failures`; the others were written to
    ``output_dir``). Returns the exit status."""
    for line in result.summary_lines():
        print(line)
    if written is not None:
        print(f"wrote {written}")
    failed = getattr(result, "failed", None)
    if failed is None:
        return 0
    return report_failures(failed, result.metrics["num_images"], str(output_dir))


# -- the model and running options of the image-classifier commands (classify, localize) -----

#: Network input sides: 16 px is the smallest a DRN (output stride 8) still maps to a 2x2 grid;
#: past 8192 px one image would not fit an accelerator.
CROP_RANGE = (16, 8192)


def add_classifier_model(
    parser: Parser, training: bool = False, sizes: bool = True, inference: bool = True
) -> None:
    """``--model``, ``--weights``, ``--pretrained``, ``--channels``; for eval/predict also
    ``--num-classes`` and ``--class-names``; with ``sizes`` ``--crop-size`` / ``--resize-size``."""
    g = group(parser, "model")
    if training:
        add_model(g, "drn_d_22")
        add_weights(
            g,
            "initialise from this checkpoint (a classifier with another number of classes "
            "keeps its backbone and gets a fresh fc)",
        )
    else:
        add_weights(
            g,
            "a 'drnet classify train' run directory (its model.json gives the architecture, "
            "classes and preprocessing), a drnet checkpoint or an official .pth",
        )
        add_model(g, help="architecture name, when --weights has no model.json")
        add_num_classes(g, "classes of the model (default: model.json or the checkpoint's fc)")
        add_class_names(g)
    add_pretrained(g, "start from the published ImageNet weights")
    add_channels(g)
    if not sizes:
        return
    g.add_argument(
        "--crop-size",
        type=int_in(*CROP_RANGE),
        default=224 if training else None,
        help="network input size: RandomResizedCrop in training, centre crop in eval"
        + ("" if training else " (default: the run's model.json, else 224)"),
    )
    if training:
        g.add_argument(
            "--crop-scale",
            type=float_in(0, 1, low_open=True),
            default=0.08,
            help="smallest RandomResizedCrop area as a fraction of the image (0.08 is the "
            "ImageNet recipe; raise it for small objects on small images)",
        )
    g.add_argument(
        "--resize-size",
        type=int_in(*CROP_RANGE),
        help="eval resize of the shorter side before the centre crop (default: crop/0.875, "
        "256 for 224)",
    )


def add_running(
    parser: Parser, output_dir: str, batch_size: int | None, workers: int, amp: bool = True
) -> None:
    """What every eval/predict command of an image classifier takes: ``-o/--output-dir``,
    ``-b/--batch-size`` (unless ``None``) and the :func:`add_inference_options` group."""
    g = add_inference_options(parser, workers, amp)
    add_output_dir(g, output_dir)
    if batch_size is not None:
        add_batch_size(g, batch_size)
