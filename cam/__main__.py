"""Command line: cam (or python -m cam) {localize,label,train,evaluate,app}; JSON lines on stdout, errors on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path


def _add_cam_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The model, runtime and device options, and one option for each field of `cam.Settings`
    (its flag, help and default from the field) but those in `skip`, with the presets."""
    from .settings import PLAIN, RECOMMENDED, Settings

    parser.add_argument("--model", default="default", help="model spec (default: the bundled EfficientNet-Lite0)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="timm/torchvision names: random weights instead of the hub's (no network needed)")
    for option in fields(Settings):
        if option.name in skip:
            continue
        meta, default = option.metadata, getattr(RECOMMENDED, option.name)
        if meta.get("boolean"):
            parser.add_argument(meta["flag"], dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{meta['help']} (default: {'on' if default else 'off'}"
                                     f"{'; --plain: off' if getattr(PLAIN, option.name) != default else ''})")
        else:
            shown = {"input_size": f"{default}; 0 or --plain: the model's own", "topk": "5", "classes": "all"}
            parser.add_argument(meta["flag"], dest=option.name, type=meta.get("type", str), choices=meta.get("choices"),
                                default=None, help=f"{meta['help']} (default {shown.get(option.name, default)})")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "openvino"],
                        help="what runs the network: auto (default: openvino on a CPU where it is installed, else "
                             "torch), torch, or openvino (the compiled CPU runtime)")
    _add_device_option(parser)
    presets = parser.add_mutually_exclusive_group()
    presets.add_argument("--plain", action="store_true",
                         help="the paper's CAM exactly: model input size, no flip, no refinement, threshold 0.2, "
                              "largest region, the map's box (also on a checkpoint with a detector)")
    presets.add_argument("--best", action="store_true",
                         help="input 288, flip, refinement and adapted contrast (about 1.4x the default's time; "
                              "README, 'Localization quality')")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda where a GPU is present, else cpu)")


def _cam_settings(args):
    """The `cam.Settings` of the command line: the recommended ones unless --plain or --best, each
    option given replacing its field."""
    from .settings import PRESETS, Settings

    base = PRESETS["plain" if args.plain else "best" if args.best else "recommended"]
    given = {option.name: getattr(args, option.name) for option in fields(Settings)
             if getattr(args, option.name, None) is not None}
    if "classes" in given:
        given["classes"] = _class_list(given["classes"])
    if given.get("input_size") == 0:
        given["input_size"] = None
    return replace(base, **given)


def _load(args):
    """The model the command line names, on its runtime and device."""
    from .loading import load_model

    return load_model(args.model, pretrained=not args.no_pretrained, device=args.device, runtime=args.runtime)


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def cmd_localize(args) -> int:
    from . import render
    from .data import find_images, read_photo
    from .localize import localize_batch
    from .preprocess import check_input_size, inference_batch_size

    settings = _cam_settings(args)
    model = _load(args)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()

    def finish(batch: list) -> None:
        """Localize the loaded (path, photo) pairs in one forward pass and report each."""
        results = localize_batch(model, [photo for _, photo in batch], settings)
        for (path, _), result in zip(batch, results):
            record = {"image": str(path), **result.to_dict()}
            if out:
                stem = path.stem
                while stem in used_names:
                    stem += "_"
                used_names.add(stem)
                image = result.image  # the photo at its own size
                if result.predictions:  # none above --min-score: no map to overlay, the rest is written
                    render.save_png(render.top_overlay(result, args.opacity, image), out / f"{stem}_overlay.png")
                render.save_png(render.draw_boxes(image, result), out / f"{stem}_boxes.png")
                (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
            _emit(record)
            if not result.predictions:
                print(f"note: {path}: no class scored at least {settings.min_score:g}", file=sys.stderr, flush=True)

    paths = find_images(args.images)
    # A progress bar only for a person watching a terminal: piped or logged stderr keeps one line per error.
    bar = _progress_bar("localize") if len(paths) > 1 and sys.stderr.isatty() else None
    size = check_input_size(settings.input_size, model)
    batch_size = inference_batch_size(model, size)
    failures, batch = 0, []
    for done, path in enumerate(paths, start=1):
        try:
            batch.append((path, read_photo(path, cover=max(size))))
        except (ValueError, OSError) as exc:
            if bar:
                print("\r\033[K", end="", file=sys.stderr)  # clear the bar's line for the error
            _error(str(exc))
            failures += 1
        if len(batch) == batch_size or done == len(paths):
            if batch:
                finish(batch)
            batch = []
            if bar:
                bar(done, len(paths))
    return 1 if failures else 0


def cmd_label(args) -> int:
    from .label import label

    settings = _cam_settings(args)
    bar = _progress_bar("label", unit="photos") if sys.stderr.isatty() else None
    summary = label(args.inputs, args.out, model=args.model, settings=settings, formats=args.format,
                    batch_size=args.batch_size, pretrained=not args.no_pretrained,
                    engine=args.engine, ray_address=args.ray_address, ray_cpus_per_worker=args.ray_cpus_per_worker,
                    runtime=args.runtime, device=args.device, progress=bar, on_record=lambda record, _: _emit(record),
                    val_fraction=args.val_fraction, copy_images=args.copy_images)
    _emit(summary)
    if summary["errors"]:
        _error(f"{summary['errors']} file(s) could not be read: see {Path(args.out) / 'errors.jsonl'}")
        return 1
    return 0


def _class_list(value: str | None) -> tuple | None:
    """`--classes`: a file of class names, one a line, or names separated by commas; a number is a
    class index."""
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value.replace(",", "\n")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(int(name) if name.isdigit() else name for name in names)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, plot_curve, write_rows

    settings = _cam_settings(args)
    model = _load(args)
    metrics, rows = evaluate(model, args.folder, settings, progress=_progress_bar("evaluate"))
    if args.per_image:
        write_rows(rows, args.per_image)
    if args.plot:
        plot_curve(metrics, args.plot)
    metrics.pop("curve")
    _emit({"model": model.spec, "settings": settings.to_dict(), **metrics})
    return 0


def cmd_app(args) -> int:
    from .ui import main as serve

    serve([*(["--host", args.host] if args.host else []), *(["--port", str(args.port)] if args.port else [])])
    return 0


def cmd_train(args) -> int:
    import torch

    from .train import Recipe, train

    torch.manual_seed(args.seed)  # this process's own RNG: random weights and mode full's dropout repeat

    bar = _progress_bar("train")

    def progress(info: dict) -> None:
        _emit({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()})
        if "epoch" in info:
            bar(info["epoch"] - 1 + info.get("step", info.get("steps", 1)) / info.get("steps", 1), info["epochs"])
        else:
            print(f"{info['stage']}...", file=sys.stderr, flush=True)

    recipe = Recipe(model=args.model, mode=args.mode, epochs=args.epochs, lr=args.lr, val_split=args.val_split,
                    seed=args.seed, pretrained=not args.no_pretrained, input_size=args.input_size,
                    detector=args.detector, detector_epochs=args.detector_epochs, reviewed_boxes=args.boxes_from,
                    reviewed_only=args.reviewed_only)
    summary = train(args.data, recipe, out=args.out, device=args.device, progress=progress)
    _emit(summary)
    return 0


def _progress_bar(title: str, unit: str | None = None):
    """A callback(done, total) drawing a one-line progress bar on stderr; with `unit`, also the
    rate since the first call, in `unit`/s."""
    first: list[tuple[float, float]] = []

    def update(done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        rate = ""
        if unit:
            if not first:
                first.append((time.perf_counter(), done))
            seconds = time.perf_counter() - first[0][0]
            rate = f" {(done - first[0][1]) / seconds:.1f} {unit}/s" if seconds > 0 else ""
        print(f"\r{title} [{'#' * filled}{'.' * (30 - filled)}] {done:g}/{total}{rate}", end=end, file=sys.stderr,
              flush=True)
    return update


def _input_size_default() -> str:
    """`train --input-size`'s default as `cam.train.DEFAULT_INPUT_SIZE` has it, e.g. 'default 288 in
    both modes' or 'default 288 (head) or 224 (full)'."""
    from .train import DEFAULT_INPUT_SIZE

    sizes = {mode: "the model's own" if size is None else str(size) for mode, size in DEFAULT_INPUT_SIZE.items()}
    if len(set(sizes.values())) == 1:
        return f"default {next(iter(sizes.values()))} in both modes"
    return "default " + " or ".join(f"{size} ({mode})" for mode, size in sizes.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    loc = sub.add_parser("localize", help="top classes, maps and boxes for images or folders of images")
    loc.add_argument("images", nargs="+", help="image files or folders (walked recursively)")
    loc.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity of the saved overlay")
    loc.add_argument("--out", help="folder for overlay and box PNGs and a JSON file per image")
    _add_cam_options(loc)
    loc.set_defaults(run=cmd_localize)

    tr = sub.add_parser("train", help="fine-tune on a zip or folder of class folders; writes a checkpoint")
    tr.add_argument("data", help="DATA.zip or a folder holding one folder of images per class")
    tr.add_argument("--model", default="default", help="model to start from (default: the bundled ImageNet model)")
    tr.add_argument("--mode", choices=["head", "full"], default="head",
                    help="head: train the classifier on frozen features (fast); full: the whole network")
    tr.add_argument("--epochs", type=int, default=None, help="default 30 (head) or 5 (full)")
    tr.add_argument("--lr", type=float, default=None, help="learning rate, default 1e-2 (head) or 1e-3 (full)")
    tr.add_argument("--val-split", type=float, default=0.2, help="fraction of each class held out for validation")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--input-size", type=int, default=None,
                    help=f"square side the images are trained at, and the checkpoint's own ({_input_size_default()})")
    tr.add_argument("--no-pretrained", action="store_true", help="timm/torchvision names: start from random weights")
    tr.add_argument("--detector", action="store_true",
                    help="then train a detector on the classifier's own boxes of the training photos: several "
                         "scored boxes per class, which localize, label and the app then give beside the maps' box")
    tr.add_argument("--detector-epochs", type=int, default=None,
                    help="the detector's epochs over the photos and their mirror images (default 24)")
    tr.add_argument("--boxes-from", default=None, metavar="COCO.json",
                    help="reviewed boxes (our coco.json, or one corrected in a labelling tool; implies --detector): "
                         "the photos it lists learn from them last, the others from the maps; from 5 photos on, "
                         "they also choose what --boxes auto gives")
    tr.add_argument("--reviewed-only", action="store_true",
                    help="the detector learns from the --boxes-from photos alone")
    tr.add_argument("--out", default="checkpoints", help="folder that receives experiment_YYYY-MM-DD_HH_MM/")
    _add_device_option(tr)
    tr.set_defaults(run=cmd_train)

    lab = sub.add_parser("label", help="boxes for a photo collection as COCO, YOLO and Pascal VOC files (resumable)")
    lab.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) and zips")
    lab.add_argument("--out", required=True, help="output folder; rerunning the same command there resumes the run")
    lab.add_argument("--format", default="coco,yolo,voc", help="comma-separated among coco, yolo, voc (default: all)")
    lab.add_argument("--val-fraction", type=float, default=0.1,
                     help="photos in the YOLO and VOC validation split, chosen by a stable hash of each path (default 0.1)")
    lab.add_argument("--copy-images", action="store_true",
                     help="copy the photos into yolo/images and the VOC JPEGImages instead of linking them")
    lab.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: this process; ray: a Ray Data actor pool (pip install -r requirements-scale.txt)")
    lab.add_argument("--ray-address", default=None,
                     help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 (default: start a local Ray)")
    lab.add_argument("--ray-cpus-per-worker", type=int, default=None,
                     help="CPUs (and torch threads) per Ray actor (default: this machine's torch threads)")
    lab.add_argument("--batch-size", type=int, default=None,
                     help="photos per forward pass (default: at most 250,000 input pixels on a CPU, 16 on a GPU)")
    _add_cam_options(lab)
    lab.set_defaults(run=cmd_label)

    web = sub.add_parser("app", help="serve the web app (default http://0.0.0.0:7860)")
    web.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0, or GRADIO_SERVER_NAME)")
    web.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    web.set_defaults(run=cmd_app)

    ev = sub.add_parser("evaluate", help="WSOL metrics on a folder holding images/ and boxes.csv")
    ev.add_argument("folder")
    ev.add_argument("--per-image", help="write one CSV row per image here")
    ev.add_argument("--plot", help="write a PNG of box accuracy against threshold here")
    _add_cam_options(ev, skip=("topk", "classes", "min_score", "all_regions"))  # the metrics fix these
    ev.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .runtime import steady_allocator

        steady_allocator()  # process-wide malloc tuning: the CLI's process is its own
        return args.run(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (ValueError, TypeError, OSError) as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
