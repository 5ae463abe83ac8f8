"""`yolo-prune classify {train,test,sensitivity}`: the classification CNNs (vgg16_bn, resnet18/50, SCNNB) on
digits / ImageFolder / CIFAR-10 / Fashion-MNIST files; pruning, masks and gating use the shared commands."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (add_run_flags, img_int, input_file, literal_numbers, non_negative_int, output_dir,
                                   positive_int, print_json)

EPILOG = """examples:
  yolo-prune classify train --arch scnnb --data digits --epochs 10 --name scnnb
  yolo-prune classify train --weights runs/classify/scnnb/weights/best.pt --pruning-params 0.5 --epochs 3
  yolo-prune classify train --arch resnet18 --weights resnet18.pth --data imagefolder:my_images --img 64
  yolo-prune classify train --resume runs/classify/scnnb
  yolo-prune classify test --weights runs/classify/scnnb/weights/best.pt --data digits
  yolo-prune classify sensitivity --weights best.pt --pruning-rate '[0.25, 0.5, 0.75]' --name sens"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="digits (default; scikit-learn's bundled set), imagefolder:DIR "
                   "or a DIR with train/ and val/, cifar10:DIR, fashion-mnist:DIR (never downloaded)")
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data loader worker processes (default 0)")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from yolo_prune.cli.prune import add_pruning_flags
    from yolo_prune.models.classify import ARCHS

    p = sub.add_parser("train", help="train or fine-tune a classifier", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--arch", choices=sorted(ARCHS), default=None, help="a new network (random init), or the "
                   "architecture of a torchvision-style state dict given with --weights")
    p.add_argument("--weights", default=None, help="a yolo-prune classifier checkpoint, or (with --arch) a "
                   "state dict such as torchvision's .pth")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of a new network (default 1)")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None,
                   help="input size images are resized to (default: a checkpoint's own, else 32)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=64,
                   help="batch size (default 64)")
    p.add_argument("--lr0", type=float, default=0.05, help="initial learning rate (default 0.05; cosine to lr0*lrf)")
    p.add_argument("--lrf", type=float, default=0.01, help="final LR factor (default 0.01)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--saliency-l1", type=float, default=None,
                   help="FBS: weight of the L1 term on the gates' saliencies (default: what the checkpoint says)")
    p.add_argument("--no-augment", action="store_true", help="no random shifts")
    add_run_flags(p, "runs/classify")
    add_pruning_flags(p, required=False)
    p.set_defaults(func=run_train, criterion="l1", command="classify train")


def _test_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="top-1 / top-5 accuracy of a classifier checkpoint on the val split")
    _common(p)
    p.add_argument("--weights", required=True, help="a yolo-prune classifier checkpoint")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=128)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_test, command="classify test")


def _sensitivity_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="Li et al.: prune each layer alone at each rate, score top-1")
    _common(p)
    p.add_argument("--weights", required=True, help="a yolo-prune classifier checkpoint")
    p.add_argument("--pruning-rate", default="[0.25, 0.5, 0.75]", help="rates, e.g. '[0.25, 0.5, 0.75]'")
    p.add_argument("--criterion", default="l1", help="importance criterion (default l1, Li et al.'s)")
    p.add_argument("--layers", default=None, help="only these layers, e.g. '[0, 1]' (default: every prunable one)")
    p.add_argument("--project", default="output", help="parent folder (default output)")
    p.add_argument("--name", default="classify", help="analysis folder name (default classify)")
    p.add_argument("--exist-ok", action="store_true", help="replace an existing analysis of other settings")
    p.set_defaults(func=run_sensitivity, command="classify sensitivity")


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = p.add_subparsers(dest="task", metavar="{train,test,sensitivity}", required=True)
    _train_parser(inner)
    _test_parser(inner)
    _sensitivity_parser(inner)


def check_args(args: argparse.Namespace) -> None:
    """Files and output folders before any work (values are checked by the settings and the trainer)."""
    if getattr(args, "weights", None) and not getattr(args, "resume", False):
        input_file(args.weights, "--weights")
    if getattr(args, "pruning_config", None):
        input_file(args.pruning_config, "--pruning-config")
    if getattr(args, "project", None):
        output_dir(args.project, "--project")


def run_train(args: argparse.Namespace) -> int:
    from yolo_prune.engine.classify import ClassifySettings, train_classifier

    check_args(args)
    result = train_classifier(ClassifySettings(
        data=args.data, arch=args.arch, weights=args.weights, width=args.width, img_size=args.img,
        epochs=args.epochs, batch_size=args.batch_size, lr0=args.lr0, lrf=args.lrf, weight_decay=args.weight_decay,
        pruning_params=args.pruning_params, criterion=args.criterion, round_to=args.round_to,
        pruning_config=args.pruning_config, scoring=args.scoring, saliency_l1=args.saliency_l1, augment=not args.no_augment, seed=args.seed, device=args.device,
        workers=args.workers, project=args.project, name=args.name, exist_ok=args.exist_ok, resume=args.resume))
    best = result.best_row
    if best is not None:
        print(f"best epoch {result.best_epoch}: top-1 {best['top1']:.4f}, top-5 {best['top5']:.4f}; weights "
              f"{result.best}")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.pipeline.classify import evaluate_on_classification
    from yolo_prune.pipeline.devices import select_device

    check_args(args)
    model = load_model(args.weights)
    res = evaluate_on_classification(model, args.data, batch_size=args.batch_size, workers=args.workers,
                                     device=select_device(args.device), source=args.weights)
    params, gflops = count_params(model), count_gflops(model.cpu(), model.img_size, model.ch_in)
    if args.json:
        print_json({**res.to_dict(), "params": params, "gflops": gflops})
    else:
        print(f"{args.weights} on {args.data}: top-1 {res.top1:.4f}, top-5 {res.top5:.4f}, loss {res.loss:.4f} "
              f"({res.images} images); {params:,} parameters, {gflops:.4f} GFLOPs @{model.img_size}")
    return 0


def run_sensitivity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from yolo_prune.checkpoint import load_model
    from yolo_prune.pipeline.classify import classify_sensitivity
    from yolo_prune.pipeline.devices import select_device

    rates = literal_numbers(args.pruning_rate, "--pruning-rate", float, 0.0, 1.0, open_interval=True)
    layers = literal_numbers(args.layers, "--layers", int, 0) if args.layers else None
    check_args(args)
    out = Path(args.project) / args.name
    store = classify_sensitivity(load_model(args.weights), args.data, rates, out, criterion=args.criterion,
                                 layers=layers, device=select_device(args.device), exist_ok=args.exist_ok,
                                 source=args.weights)
    base = store.baseline
    print(f"baseline top-1 {base['top1']:.4f}; per layer and rate (top-1):")
    for rate in rates:
        print(f"  rate {rate:g}: " + ", ".join(f"{r['layer']}: {r['top1']:.4f}" for r in store.rows(rate)))
    print(f"results in {out}/sensitivity.csv")
    return 0
