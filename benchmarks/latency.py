"""CPU latency of CAM on a ~1 MP (or any size) photo, side by side with the bare model and the peers; prints JSON.

    python benchmarks/latency.py [--repeats 30] [--image examples/coffee.png] [--megapixels 1]

Each round times every method once, in turn, so machine noise hits all alike; medians are
reported. The peers share our preprocessing and channels-last network. torchcam's row resizes its
maps to the photo the way torchcam resizes its own (F.interpolate, bilinear, align_corners=False);
a second row hands torchcam our upsampling and normalisation instead, which leaves only the CAM
step and our boxing between the two. GradCAM's maps (at the input size) are upsampled with ours.
Also checks that our top-1 map equals torchcam's CAM after the same upsampling. The `_openvino`
rows run the same on OpenVINO's compiled CPU runtime (`runtime="openvino"`), and the `_onnxruntime`
rows on ONNX Runtime (the same ONNX export, spinning threads off, which measured faster within
`localize`), the compiled runtime measured and not adopted. `localize_top5_best_*` is the best
preset (`quality="best"`), whose budget is the recommended setting's time on PyTorch.

    python benchmarks/latency.py --gradcam-models default timm:vit_small_patch16_224 --repeats 20

compares instead our top-k Grad-CAM with pytorch-grad-cam's, model by model (random weights).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
import cam.runtime  # noqa: E402
from cam import render  # noqa: E402
from cam.data import load_image  # noqa: E402
from cam.methods import class_maps, forward_features  # noqa: E402
from cam.preprocess import preprocess  # noqa: E402
from cam.upsample import normalise_for_size, upsample_map  # noqa: E402


def photo_of(path: Path, megapixels: float) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = (megapixels * 1_000_000 / (image.width * image.height)) ** 0.5
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))


class OnnxRuntimeRunner:
    """`runner(batch) -> (logits, features, guide)` from ONNX Runtime, one session per input size."""

    def __init__(self, model):
        self.model, self.sessions = model, {}

    def __call__(self, batch: torch.Tensor):
        import onnxruntime as ort

        size = tuple(batch.shape[2:])
        if size not in self.sessions:
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:  # the session keeps the model in memory
                path = cam.runtime.export_onnx(self.model, size, Path(scratch) / "model.onnx")
                self.sessions[size] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return tuple(torch.from_numpy(v) for v in self.sessions[size].run(None, {"x": batch.numpy()}))


def gradcam_side_by_side(spec: str, photo: np.ndarray, topk: int, repeats: int) -> dict:
    """Top-k Grad-CAM of `spec` (random weights), ours (`localize`, boxes included) against
    pytorch-grad-cam's GradCAM on the same layer (with our `spatial` as its reshape transform) and
    classes, its maps upsampled with ours; medians of alternating runs."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = cam.load_model(spec, pretrained=False, device="cpu", runtime="torch")
    height, width = photo.shape[:2]
    plain = {"input_size": None, "refine": False}
    classes = [p.class_index for p in cam.localize(model, photo, topk=topk, method="gradcam", **plain).predictions]
    reshape = None if model.feature_layout == "nchw" else model.spatial

    def ours():
        return cam.localize(model, photo, topk=topk, method="gradcam", **plain)

    def peer():
        x = preprocess(model, [photo], model.input_size).repeat(len(classes), 1, 1, 1)
        with GradCAM(model=model.net, target_layers=[model.feature_module], reshape_transform=reshape) as explainer:
            maps = explainer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
        return [upsample_map(m, (height, width)) for m in maps]

    times = {"localize_gradcam": [], "pytorch_grad_cam_gradcam": []}
    ours(), peer()  # warm up
    for _ in range(repeats):
        for name, fn in zip(times, (ours, peer)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    median = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {"model": spec, "layer": model.feature_layer, "topk": topk, "median_ms": median,
            "speedup": round(median["pytorch_grad_cam_gradcam"] / median["localize_gradcam"], 2)}


def main() -> None:
    cam.runtime.steady_allocator()  # as the app and the CLI do at start: the figures are theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "examples" / "coffee.png"))
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--megapixels", type=float, default=1.0, help="the photo is resized to this many pixels")
    parser.add_argument("--gradcam-models", nargs="+", metavar="SPEC",
                        help="instead: our top-k Grad-CAM against pytorch-grad-cam's for these models")
    args = parser.parse_args()
    if args.gradcam_models:
        for spec in args.gradcam_models:
            print(json.dumps(gradcam_side_by_side(spec, photo_of(Path(args.image), args.megapixels), args.topk,
                                                  args.repeats)), flush=True)
        return

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import CAM

    model = cam.load_model("default", device="cpu", runtime="torch")  # the PyTorch rows; the _openvino rows below
    net = model.net
    photo = photo_of(Path(args.image), args.megapixels)
    height, width = photo.shape[:2]
    classes = [p.class_index for p in cam.localize(model, photo, topk=args.topk, input_size=None).predictions]

    def bare():
        with torch.inference_mode():
            net(preprocess(model, [photo], model.input_size))

    contiguous_net = copy.deepcopy(net).to(memory_format=torch.contiguous_format)

    def bare_contiguous():  # the same network with its weights in the default layout, as before load_model's channels-last
        with torch.inference_mode():
            contiguous_net(preprocess(model, [photo], model.input_size).contiguous())

    plain = {"input_size": None, "flip": False, "refine": False}  # the paper's CAM at the model's own size, as the peers

    def ours():
        cam.localize(model, photo, topk=args.topk, **plain)

    def ours_all_maps_read():  # the full-size maps are made on first read: here all five are read
        return [p.cam for p in cam.localize(model, photo, topk=args.topk, **plain).predictions]

    def ours_maps_only():  # localize's own steps up to the upsampled maps, no boxing: torchcam's output
        batch = preprocess(model, [load_image(photo)], model.input_size)
        logits, features, _ = forward_features(model, batch)
        indices = logits.softmax(1).topk(args.topk, dim=1).indices
        small = class_maps(model, features, indices).numpy()[0]
        return [upsample_map(m, (height, width)) for m in normalise_for_size(small, (height, width))]

    def ours_refined():
        cam.localize(model, photo, topk=args.topk, **{**plain, "refine": True})

    def ours_recommended():
        cam.localize(model, photo, topk=args.topk)

    def ours_rendered():
        result = cam.localize(model, photo, topk=args.topk, **plain)
        render.overlay(result.image, result.predictions[0].cam)
        render.draw_boxes(result.image, result)

    def torchcam_small_maps():  # torchcam's CAM: 5 maps at feature resolution, min-max normalised there
        with CAM(net, model.feature_layer, model.classifier_layer) as extractor:
            with torch.inference_mode():
                scores = net(preprocess(model, [photo], model.input_size))
            return torch.cat([extractor(c, scores)[0] for c in classes])

    def torchcam_cam():  # resized to the photo as torchcam resizes its own maps (bilinear F.interpolate)
        with torch.inference_mode():
            return F.interpolate(torchcam_small_maps()[None], size=(height, width), mode="bilinear",
                                 align_corners=False)[0]

    def torchcam_cam_our_upsampling():  # torchcam handed our upsampling and normalisation
        maps = torchcam_small_maps().numpy()
        return [upsample_map(m, (height, width)) for m in normalise_for_size(maps, (height, width))]

    def gradcam():
        x = preprocess(model, [photo], model.input_size).repeat(len(classes), 1, 1, 1)
        with GradCAM(model=net, target_layers=[model.feature_module]) as explainer:
            maps = explainer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
        return [upsample_map(m, (height, width)) for m in maps]  # already min-max normalised at the input size

    def ours_gradcam():  # our Grad-CAM: one forward and one backward batched over the 5 classes, with boxes
        return cam.localize(model, photo, topk=args.topk, method="gradcam", **plain)

    def compiled_rows(runner_model, runtime: str) -> dict:
        """The bare and `localize` rows of a compiled runtime."""
        def bare_compiled():  # preprocessing + the compiled network (logits, features, guide out), as localize runs them
            with cam.runtime.torch_yields_threads():
                runner_model.runner(preprocess(runner_model, [photo], runner_model.input_size))

        return {f"bare_model_{runtime}": bare_compiled,
                f"localize_top5_{runtime}": lambda: cam.localize(runner_model, photo, topk=args.topk, **plain),
                f"localize_top5_recommended_288px_refined_{runtime}": lambda: cam.localize(runner_model, photo,
                                                                                             topk=args.topk),
                f"localize_top5_best_{runtime}": lambda: cam.localize(runner_model, photo, topk=args.topk,
                                                                       quality="best")}

    compiled = cam.load_model("default", device="cpu", runtime="openvino")
    onnx = cam.load_model("default", device="cpu", runtime="torch")
    onnx.runtime, onnx.runner = "onnxruntime", OnnxRuntimeRunner(onnx)
    methods = {"bare_model": bare, "bare_model_contiguous_weights": bare_contiguous, "localize_top5": ours,
               "localize_top5_all_maps_read": ours_all_maps_read, "maps_only_top5": ours_maps_only,
               "localize_top5_rendered": ours_rendered, "localize_top5_refined": ours_refined,
               "localize_top5_recommended_288px_refined": ours_recommended, "torchcam_cam_top5": torchcam_cam,
               "torchcam_cam_top5_our_upsampling": torchcam_cam_our_upsampling, "gradcam_top5": gradcam,
               "localize_gradcam_top5": ours_gradcam, **compiled_rows(compiled, "openvino"),
               **compiled_rows(onnx, "onnxruntime")}
    for fn in methods.values():  # warm up
        fn()
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    median = {name: statistics.median(values) for name, values in times.items()}
    prepared = preprocess(model, [photo], model.input_size)
    back_to_back = {}  # each many times in a row: no other thread pool woken in between
    for name, fn in (("bare_model", bare), ("bare_model_openvino", methods["bare_model_openvino"]),
                     ("network_only", lambda: forward_features(model, prepared)),
                     ("network_only_openvino", lambda: compiled.runner(prepared)),
                     ("network_only_onnxruntime", lambda: onnx.runner(prepared))):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1000)
        back_to_back[name] = round(statistics.median(runs), 2)

    ours_top1 = cam.localize(model, photo, topk=1, **plain).predictions[0].cam
    theirs_top1 = torchcam_cam_our_upsampling()[0]

    def ratio(numerator: str, denominator: str) -> float:
        return median[numerator] / median[denominator]

    report = {
        "image": f"{Path(args.image).name} resized to {width}x{height}",
        "device": "cpu", "threads": torch.get_num_threads(), "repeats": args.repeats,
        "median_ms": {k: round(v, 2) for k, v in median.items()},
        "ratio_localize_to_bare": round(ratio("localize_top5", "bare_model"), 3),
        "ratio_rendered_to_bare": round(ratio("localize_top5_rendered", "bare_model"), 3),
        "speedup_vs_gradcam": round(ratio("gradcam_top5", "localize_top5"), 2),
        "our_gradcam_speedup_vs_gradcam": round(ratio("gradcam_top5", "localize_gradcam_top5"), 2),
        "back_to_back_ms": back_to_back,
        **{runtime: {"bare_speedup": round(ratio("bare_model", f"bare_model_{runtime}"), 2),
                     "localize_speedup": round(ratio("localize_top5", f"localize_top5_{runtime}"), 2),
                     "recommended_speedup": round(ratio("localize_top5_recommended_288px_refined",
                                                        f"localize_top5_recommended_288px_refined_{runtime}"), 2),
                     "localize_to_own_bare": round(ratio(f"localize_top5_{runtime}", f"bare_model_{runtime}"), 3),
                     "best_to_torch_recommended": round(ratio(f"localize_top5_best_{runtime}",
                                                              "localize_top5_recommended_288px_refined"), 2)}
           for runtime in ("openvino", "onnxruntime")},
        "speedup_vs_torchcam": round(ratio("torchcam_cam_top5", "localize_top5"), 2),
        "speedup_vs_torchcam_all_maps_read": round(ratio("torchcam_cam_top5", "localize_top5_all_maps_read"), 2),
        "speedup_vs_torchcam_our_upsampling": round(ratio("torchcam_cam_top5_our_upsampling", "localize_top5"), 2),
        "speedup_vs_torchcam_our_upsampling_same_output": round(
            ratio("torchcam_cam_top5_our_upsampling", "maps_only_top5"), 2),
        "max_abs_diff_top1_vs_torchcam": float(np.abs(ours_top1 - theirs_top1).max()),
        "max_abs_diff_maps_only_vs_localize": float(max(np.abs(a - p.cam).max() for a, p in zip(
            ours_maps_only(), cam.localize(model, photo, topk=args.topk, **plain).predictions))),
        "targets": {"localize_to_bare<=1.3": ratio("localize_top5", "bare_model") <= 1.3,
                    "rendered_to_bare<=2": ratio("localize_top5_rendered", "bare_model") <= 2,
                    "speedup_vs_gradcam>=3": ratio("gradcam_top5", "localize_top5") >= 3,
                    "our_gradcam_not_slower_than_gradcam": ratio("localize_gradcam_top5", "gradcam_top5") <= 1,
                    "not_slower_than_torchcam": ratio("localize_top5", "torchcam_cam_top5") <= 1,
                    "maps_not_slower_than_torchcam_our_upsampling":
                        ratio("maps_only_top5", "torchcam_cam_top5_our_upsampling") <= 1,
                    "openvino_recommended_speedup>=2": ratio("localize_top5_recommended_288px_refined",
                                                             "localize_top5_recommended_288px_refined_openvino") >= 2,
                    "openvino_localize_to_own_bare<=1.3": ratio("localize_top5_openvino", "bare_model_openvino") <= 1.3,
                    "openvino_best_not_slower_than_torch_recommended":
                        ratio("localize_top5_best_openvino", "localize_top5_recommended_288px_refined") <= 1},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
