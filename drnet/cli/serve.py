"""``drnet serve``: a local web page and JSON API for classifiers and segmenters, side by side."""

from __future__ import annotations

import argparse
import logging

from drnet.cli import float_in, int_in, non_negative_int, positive_int
from drnet.cli.vocab import (
    add_device,
    add_dtype,
    add_model,
    add_no_fast,
    add_num_classes,
    add_pretrained,
    hidden,
    load_from_args,
)
from drnet.constants import (
    SEGMENT_MAX_SIDE,
    SERVE_HOST,
    SERVE_MAX_PIXELS,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
)
from drnet.errors import DrnetError

logger = logging.getLogger("drnet")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page: class maps, boxes, label maps and activations of your images",
        description="Serve a page (and its JSON API) where you drop images and see, for each "
        "model side by side: a classifier's top-5 classes, the class map of any class and the "
        "paper's box with a live threshold slider; a segmenter's label map, overlay and class "
        "shares; and for both the activation map of every level with its gridding score and "
        "the time each step took. A classifier's first box uses its run's tuned threshold "
        "(localization_metrics.json or metrics.json in the run folder or a sibling "
        "localization/ folder), else --threshold, else 0.2. Binds 127.0.0.1 unless --host "
        "says otherwise; nothing is written to disk. API: GET /api/models, POST /api/predict "
        "(the image as the request body or multipart 'image'; "
        "?model=ID&threshold=T&activations=1).",
    )
    parser.add_argument(
        "--weights",
        action="append",
        metavar="PATH",
        help="a run directory, a drnet checkpoint, an official .pth or published weights' "
        "name; repeat for several models side by side (one per --weights)",
    )
    hidden(parser, "--checkpoint", dest="weights", metavar="PATH", action="append")
    parser.add_argument(
        "--threshold",
        type=float_in(0, 1),
        default=None,
        metavar="T",
        help="box threshold of every classifier's first box (0-1, a fraction of the class "
        "map's range); default: each run's tuned t, else 0.2",
    )
    add_model(parser, help="architecture of checkpoints that do not record it (official .pth)")
    add_pretrained(parser, "the published weights of --model (no --weights)")
    add_num_classes(parser, "classes of checkpoints that do not record them")
    add_device(parser)
    add_no_fast(parser)
    add_dtype(parser, default="auto")
    parser.add_argument("--host", default=SERVE_HOST, help="address to listen on")
    parser.add_argument(
        "--port", type=int_in(0, 65535), default=SERVE_PORT, help="port; 0 picks a free one"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=SERVE_MAX_UPLOAD_MB,
        help="largest upload accepted, in MiB",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=SERVE_MAX_PIXELS,
        help="largest image accepted, in pixels (width x height)",
    )
    parser.add_argument(
        "--max-side",
        type=non_negative_int,
        default=SEGMENT_MAX_SIDE,
        help="segmenters see images reduced to this longer side when larger; 0: never",
    )
    parser.set_defaults(func=run)


def load_models(args: argparse.Namespace) -> list:
    """One :class:`drnet.serve.api.ServedModel` per ``--weights`` (or the ``--pretrained``
    model), loaded through the same helper as every command."""
    from drnet.engine.distributed import resolve_device
    from drnet.serve.api import ServedModel

    device = resolve_device(args.device)
    sources = args.weights or [None]
    if sources == [None] and not args.pretrained:
        raise DrnetError(
            "pass --weights RUN_DIR_OR_CHECKPOINT (repeatable) or --model --pretrained"
        )
    served = []
    for number, weights in enumerate(sources, start=1):
        one = argparse.Namespace(**{**vars(args), "weights": weights})
        model, card = load_from_args(one, None)
        source = weights or f"{args.model} (published weights)"
        served.append(
            ServedModel.create(
                model,
                card,
                source,
                id=f"m{number}",
                device=device,
                fast=not args.no_fast,
                dtype=args.dtype,
                threshold=getattr(args, "threshold", None),
                progress=_warm_up_printer(f"m{number}"),
            )
        )
    return served


def _warm_up_printer(model_id: str):
    """Print each step of choosing a model's fast path while the server warms up."""

    def say(line: str) -> None:
        print(f"{model_id}: {line}", flush=True)

    return say


def _listen_error(exc: OSError) -> str:
    """Why a server could not bind, and what to do, in words."""
    import errno
    import socket

    if isinstance(exc, socket.gaierror):
        return "unknown host name (--host takes an address of this machine, e.g. 127.0.0.1)"
    reasons = {
        errno.EADDRINUSE: "the port is in use (another drnet serve?); choose another --port, "
        "or --port 0 for a free one",
        errno.EADDRNOTAVAIL: "this machine has no such address; --host takes one of its "
        "addresses, e.g. 127.0.0.1 (or 0.0.0.0 for all of them)",
        errno.EACCES: "permission denied (ports below 1024 need administrator rights); choose "
        "a --port from 1024 up",
    }
    return reasons.get(exc.errno or -1, exc.strerror or str(exc))


def run(args: argparse.Namespace) -> int:
    from drnet.serve.app import ServeSettings, is_loopback, make_server, serve_forever

    if args.max_upload_mb <= 0:
        raise DrnetError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    models = load_models(args)
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_side=args.max_side or None,
    )
    if not is_loopback(args.host):
        logger.warning(
            "warning: --host %s makes the page reachable from other machines; drnet serve has "
            "no authentication",
            args.host,
        )
    try:
        server = make_server(models, args.host, args.port, settings)
    except OSError as exc:
        raise DrnetError(f"cannot listen on {args.host}:{args.port}: {_listen_error(exc)}") from exc
    for served in models:
        threshold = (
            f" (box threshold {served.threshold:.2f}: {served.threshold_source})"
            if served.task == "classification"
            else ""
        )
        print(f"{served.id}: {served.name}{threshold}")
        served.warm_up()
    print(f"drnet serve: open {server.url} (Ctrl-C to stop)", flush=True)
    serve_forever(server)
    return 0
