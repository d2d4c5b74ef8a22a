"""Cost of one CAM training step per method relative to a bare classifier step; CAM inference.

    PYTHONPATH=src python benchmarks/bench_cam_step.py [--backbone resnet50] [--batch-size 8]
        [--size 128] [--iters 5] [--methods vanilla,puzzle,occse,poc,pnoc] [--params params.yaml]

Reference ("bare"): ``torchvision.models.<backbone>(num_classes=K)`` or, for a model torchvision
does not have, ``timm.create_model(<backbone>, num_classes=K)`` (output stride 32), forward,
MLSM on its logits, backward (no optimizer step). Each method's step is a full
``Method.train_step`` with a minimal context doing ``backward``, the engine's SGD step
(:func:`pnoc.engine.build_sgd`: Nesterov momentum 0.9, weight decay 1e-4, the authors' parameter
groups) and ``zero_grad``, i.e. everything the engine does but its bookkeeping. Everything runs
in this process on the CPU in float32; the bare step and the methods' steps run in turn, round
after round, and each figure is the median of ``--iters`` rounds after ``--warmup`` rounds.

``--params params.yaml`` builds every method from that file's ``cam`` section, as ``train_cam``
does (:func:`pnoc.steps.train_cam.method_from_params`: the ramps, δ_noc, the mask's
normalisation, the noc's BatchNorm mode, label smoothing), with its output strides
(``cam``/``oc``), ``frozen_stages`` and ``channels_last`` unless the options below are given;
``--backbone`` still picks the network (random init: nothing is downloaded). The bare reference
is torchvision's model of that name, else timm's (``efficientnet_lite0``).

``--oc-output-stride 32`` runs the OC/noc as a plain classifier (it only feeds logits to the
loss); ``--frozen-stages 1|2`` keeps the stem (and the stride-4 stage) of the generator and the
noc fixed, as IRN does (``cam.frozen_stages``). ``--channels-last`` runs the methods' networks and
batch in the channels-last memory format (``cam.channels_last``); the bare reference stays in
torchvision's default (contiguous) format, and a second bare row in channels-last is printed
beside it for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pnoc.cam.generator import CAMMethod
from pnoc.cam.inference import DEFAULT_SCALES, multiscale_cams
from pnoc.cam.methods import build_method
from pnoc.cam.schedules import Ramp
from pnoc.engine import build_sgd
from pnoc.models.cam import CAMNet
from pnoc.steps.train_cam import method_from_params

ALL_METHODS = ("vanilla", "puzzle", "occse", "poc", "pnoc")


class MinimalContext:
    """Engine-like context: backward, SGD step and zero_grad per named optimizer."""

    def __init__(self, modules: dict[str, nn.Module], lr: float = 1e-3) -> None:
        self.device = torch.device("cpu")
        self.amp = False
        self.progress = 0.5
        self.epoch = self.step = 0
        self.total_steps = 1000
        self.optimizers = {}
        for name, module in modules.items():
            groups = module.param_groups() if hasattr(module, "param_groups") else None
            groups = groups or [{"params": list(module.parameters()), "lr_mult": 1.0}]
            self.optimizers[name] = build_sgd(groups, lr=lr, weight_decay=1e-4, nesterov=True)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def update(self, optimizer: str, loss: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        loss.backward()
        opt = self.optimizers[optimizer]
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step += 1


def timed(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_robin(fns: dict[str, Callable[[], Any]], iters: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn within every round.

    Interleaving spreads slow phases of a shared machine over all of them alike, so the ratios
    between them are steadier than when each is timed in a block of its own.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_batch(batch_size: int, size: int, num_classes: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(batch_size, num_classes, generator=g) < 0.15).float()
    labels[torch.arange(batch_size), torch.arange(batch_size) % num_classes] = 1.0  # >= 1 class
    return {
        "image": torch.randn(batch_size, 3, size, size, generator=g),
        "labels": labels,
        "id": [str(i) for i in range(batch_size)],
        "index": torch.arange(batch_size),
    }


def bare_source(backbone: str) -> str:
    return "torchvision" if hasattr(torchvision.models, backbone) else "timm"


def bare_step(
    args: argparse.Namespace, batch: dict[str, Any], channels_last: bool = False
) -> Callable[[], None]:
    if bare_source(args.backbone) == "torchvision":
        net = getattr(torchvision.models, args.backbone)(num_classes=args.num_classes)
    else:
        import timm

        net = timm.create_model(args.backbone, num_classes=args.num_classes)
    net = net.train()
    x, y = batch["image"], batch["labels"]
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss = F.multilabel_soft_margin_loss(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)

    return step


def build(args: argparse.Namespace, name: str) -> CAMMethod:
    torch.manual_seed(0)
    model = CAMNet(
        args.backbone,
        args.num_classes,
        output_stride=args.output_stride,
        frozen_stages=args.frozen_stages,
    )
    oc = None
    if name in ("occse", "poc", "pnoc"):
        oc = CAMNet(args.backbone, args.num_classes, output_stride=args.oc_output_stride)
    if args.cam is not None:
        return method_from_params(args.cam.model_copy(update={"method": name}), model, oc)
    return build_method(
        name,
        model,
        oc=oc,
        alpha_p=Ramp(0.0, 4.0, 0.5),
        alpha_oc=Ramp(0.3, 1.0, 1.0),
        ow=Ramp(0.0, 1.0, 1.0),
        generator=torch.Generator().manual_seed(0),
    )


def method_step(args: argparse.Namespace, name: str, batch: dict[str, Any]) -> Callable[[], Any]:
    method = build(args, name)
    for m in method.modules().values():
        m.train()
    if args.channels_last:
        for m in method.modules().values():
            m.to(memory_format=torch.channels_last)
        batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    ctx = MinimalContext(method.modules())
    return lambda: method.train_step(batch, ctx)


def bench_inference(args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = CAMNet(args.backbone, args.num_classes, output_stride=args.output_stride).eval()
    image = torch.randn(1, 3, args.size, args.size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    return timed(
        lambda: multiscale_cams(model, image, scales=args.scales, flip=True),
        args.iters,
        args.warmup,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument(
        "--params",
        default=None,
        help="build the methods from this params file's cam section (e.g. params.yaml)",
    )
    p.add_argument(
        "--output-stride", type=int, default=None, help="generator output stride (default 16)"
    )
    p.add_argument(
        "--oc-output-stride", type=int, default=None, help="OC/noc output stride (default: same)"
    )
    p.add_argument(
        "--frozen-stages",
        type=int,
        default=None,
        help="backbone stages kept fixed in the generator and the noc (0, 1 stem, 2 + stride 4)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="methods' networks and batch in channels-last (the bare reference stays contiguous)",
    )
    p.add_argument("--scales", default=",".join(str(s) for s in DEFAULT_SCALES))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-inference", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.scales = tuple(float(s) for s in args.scales.split(","))
    args.cam = None
    file_oc_stride = None
    if args.params:
        import yaml

        from pnoc.config import parse_params

        with open(args.params) as f:
            params = parse_params(yaml.safe_load(f), source=args.params)
        args.cam, file_oc_stride = params.cam, params.oc.output_stride
        for key in ("output_stride", "frozen_stages", "channels_last"):
            if getattr(args, key) is None:
                setattr(args, key, getattr(params.cam, key))
    args.output_stride = args.output_stride or 16
    args.frozen_stages = args.frozen_stages or 0
    args.channels_last = bool(args.channels_last)
    args.oc_output_stride = args.oc_output_stride or file_oc_stride or args.output_stride
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {ALL_METHODS}")

    batch = make_batch(args.batch_size, args.size, args.num_classes)
    print(
        f"{args.backbone}, batch {args.batch_size} × {args.size} px, K={args.num_classes}, "
        f"generator OS {args.output_stride}, OC/noc OS {args.oc_output_stride}, "
        f"frozen stages {args.frozen_stages}, "
        f"{'channels-last' if args.channels_last else 'contiguous'}, "
        f"{torch.get_num_threads()} threads, median of {args.iters} after {args.warmup} warm-up"
        + (f", methods as {args.params}'s cam section" if args.params else "")
    )
    config = {k: v for k, v in vars(args).items() if k not in ("json", "cam")}
    results: dict[str, Any] = {"config": config}
    bare_label = f"bare fwd+bwd ({bare_source(args.backbone)}, OS 32)"
    steps = {bare_label: bare_step(args, batch)}
    if args.channels_last:
        steps["bare, channels-last"] = bare_step(args, batch, channels_last=True)
    steps.update({name: method_step(args, name, batch) for name in methods})
    seconds = round_robin(steps, args.iters, args.warmup)
    bare = seconds[bare_label]
    rows = list(seconds.items())
    print(f"\n{'step':36s} {'s/step':>8s} {'img/s':>8s} {'× bare':>7s}")
    for label, sec in rows:
        print(f"{label:36s} {sec:8.3f} {args.batch_size / sec:8.2f} {sec / bare:7.2f}")
    results["steps"] = {
        label: {"seconds": sec, "images_per_s": args.batch_size / sec, "ratio_to_bare": sec / bare}
        for label, sec in rows
    }
    if not args.no_inference:
        sec = bench_inference(args)
        scales = "/".join(f"{s:g}" for s in args.scales)
        print(
            f"\nCAM inference, 1 × {args.size} px, scales {scales} + flip: "
            f"{sec:.3f} s/image, {1 / sec:.2f} images/s"
        )
        results["inference"] = {"seconds_per_image": sec, "images_per_s": 1 / sec}
    if args.json:
        from pnoc.io import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
