"""`yolo-prune train`: train or fine-tune a (pruned) YOLOv7 model with the official recipe; resumable, DDP-ready."""
from __future__ import annotations

import argparse

import sys

from yolo_prune.cli.common import (V5_METRIC, add_run_flags, add_unsupported_flags, img_int, input_file,
                                   non_negative_float, non_negative_int, output_dir, positive_int, refuse_unsupported)
from yolo_prune.cli.prune import add_pruning_flags, criterion_options
from yolo_prune.errors import YoloPruneError

EPILOG = """examples:
  yolo-prune train --weights yolov7-tiny.pt --data data.yaml --hyp scratch.tiny --epochs 100 --batch-size 32
  yolo-prune train --weights yolov7.pt --data data.yaml --pruning-params "[(8, 0.5), (18, 0.5)]" --criterion 0 --distill
  yolo-prune train --weights best.pt --data data.yaml --pruning-params 0.3 --criterion taylor --reconstruct \
      --pruning-iter 3 --epochs 30 --distill --feature-distill kept
  yolo-prune train --cfg yolov7-tiny --data data.yaml --hyp scratch.tiny --img 320
  yolo-prune train --cfg yolov7-custom.yaml --weights yolov7_training.pt --data custom.yaml   # transfer learning
  yolo-prune train --weights best.pt --data data.yaml --qat dpu --epochs 5   (INT8 QAT for Vitis AI DPUs)
  yolo-prune train --resume                      # the newest runs/train/*/weights/last.pt
  torchrun --nproc_per_node 2 -m yolo_prune train --weights best.pt --data data.yaml --batch-size 64 --sync-bn"""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="checkpoint to fine-tune: an official YOLOv7 .pt, ours, or Darknet "
                   ".weights (the .cfg of the same name beside them)")
    p.add_argument("--cfg", default=None, help="train from scratch: shipped cfg name (yolov7-tiny), a cfg .yaml or a "
                   "Darknet .cfg; with --weights, transfer learning (every tensor matching by name and shape)")
    p.add_argument("--data", default=None, help="data YAML (YOLOv7 format); nc and names come from it")
    p.add_argument("--hyp", default=None, help="hyp YAML path or shipped name: finetune, scratch.p5, scratch.p6, "
                   "scratch.tiny, scratch.custom (default: finetune with --weights; with --cfg or --from-scratch "
                   "scratch.p6 for P6 models, else scratch.p5)")
    p.add_argument("--epochs", type=positive_int, default=300, help="epochs (default 300)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=16,
                   help="total batch size over all processes (default 16); nominal batch 64 by accumulation")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, nargs="+", default=None,
                   help="image size (default 640; 1280 for P6 models, a Darknet cfg's width; YOLOv7's 'train test' "
                        "pair, e.g. 640 640, is accepted: training and evaluation both use the first); rounded up to "
                        "the model's max stride")
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--workers", type=non_negative_int, default=8, help="data loader worker processes (default 8)")
    add_run_flags(p, "runs/train")
    add_pruning_flags(p, required=False)
    p.add_argument("--from-scratch", action="store_true", help="keep the (pruned) architecture, re-initialise weights")
    p.add_argument("--distill", action="store_true",
                   help="distil from the model before pruning: + w * MSE(student maps, teacher maps)")
    p.add_argument("--distill-weight", type=non_negative_float, default=1.0,
                   help="weight w of the distillation term (default 1)")
    p.add_argument("--feature-distill", choices=["kept", "adapter"], default=None,
                   help="also distil the neck outputs; student channels matched to the teacher's by the kept "
                   "indices or by a trained 1x1 adapter")
    p.add_argument("--feature-distill-weight", type=non_negative_float, default=1.0,
                   help="weight of the feature-distillation term (normalised MSE; default 1)")
    p.add_argument("--pruning-iter", type=positive_int, default=1,
                   help="prune in K rounds, each removing 1/K of every layer's filters and fine-tuning "
                   "--epochs/K epochs (Pruning-Darknet's iterative flow; default 1: one-shot)")
    p.add_argument("--qat", choices=("dpu", "tensorrt"), default=None,
                   help="quantization-aware training: fine-tune with int8 fake quantization for a Vitis AI DPU "
                   "(power-of-two, per-tensor) or TensorRT (per-channel weights); export the result with "
                   "`export --format vitis-int8` / `export --int8`")
    p.add_argument("--qat-calib-images", type=positive_int, default=64,
                   help="with --qat: training images that calibrate the activation scales (default 64)")
    p.add_argument("--max-val-images", type=positive_int, default=None, help="evaluate on the first N val images")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun on CUDA")
    speed = p.add_argument_group("speed (results statistically equal)")
    speed.add_argument("--cache-images", action="store_true",
                       help="decode and resize every training image once and keep it in RAM (YOLOv7's flag)")
    speed.add_argument("--amp", choices=("auto", "off", "fp16", "bf16"), default="auto",
                       help="mixed precision: auto = fp16 on CUDA, fp32 on CPU (default); bf16 = bfloat16 autocast "
                            "on a CPU/GPU with native bfloat16; off = fp32")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                       help="keep the NCHW memory format (default: channels-last, faster convolutions)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model (CUDA graphs on CUDA; the first iterations compile)")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=-1,
                   help=argparse.SUPPRESS)  # torch.distributed.launch passes it; torchrun uses LOCAL_RANK
    official = p.add_argument_group("YOLOv7 train.py options")
    official.add_argument("--adam", action="store_true", help="Adam, betas (momentum, 0.999), instead of SGD")
    official.add_argument("--linear-lr", action="store_true", help="linear LR decay to lrf instead of one-cycle")
    official.add_argument("--label-smoothing", type=non_negative_float, default=None,
                          help="label smoothing epsilon (default: the hyp's label_smoothing, 0)")
    official.add_argument("--freeze", type=non_negative_int, nargs="+", default=None,
                          help="N: keep layers 0..N-1 fixed; several values: those layer indices")
    official.add_argument("--noautoanchor", action="store_true",
                          help="keep a cfg's anchors (by default, as YOLOv7 does, they are replaced by k-means "
                               "anchors when they fit < 98 %% of the boxes); a checkpoint's own anchors are always kept")
    for flag, takes_value in WANDB_FLAGS.items():
        official.add_argument(flag, default=None, help=argparse.SUPPRESS,
                              **({} if takes_value else {"action": "store_const", "const": True}))
    add_unsupported_flags(p, UNSUPPORTED)
    p.set_defaults(func=run)


#: YOLOv7's Weights & Biases options: accepted with a note (no W&B logging here; results.csv and plots instead).
WANDB_FLAGS = {"--entity": True, "--upload_dataset": False, "--bbox_interval": True, "--save_period": True,
               "--artifact_alias": True}  # flag: takes a value
#: YOLOv7's train.py options not implemented, each with what to do instead.
UNSUPPORTED = {
    "--rect": (0, "rectangular training is not implemented (mosaic training, as YOLOv7's default)"),
    "--nosave": (0, "every epoch writes last.pt and the best epoch best.pt"),
    "--notest": (0, "every epoch is evaluated (--max-val-images N evaluates on fewer images)"),
    "--evolve": (0, "hyperparameter evolution is not implemented"),
    "--bucket": (1, "hyperparameter evolution (and its gsutil bucket) is not implemented"),
    "--image-weights": (0, "image-weighted sampling is not implemented"),
    "--multi-scale": (0, "multi-scale training is not implemented"),
    "--single-cls": (0, "single-class training is not implemented (write a data YAML with nc: 1 and labels of 0)"),
    "--quad": (0, "the quad data loader is not implemented"),
    "--v5-metric": V5_METRIC,
}


def settings_from_args(args: argparse.Namespace):
    """The :class:`TrainSettings` the flags describe (validation happens in the dataclass)."""
    from yolo_prune.engine.trainer import TrainSettings

    return TrainSettings(
        data=args.data, weights=args.weights, cfg=args.cfg, hyp=args.hyp, epochs=args.epochs,
        batch_size=args.batch_size, img_size=args.img[0] if args.img else None, device=args.device, workers=args.workers,
        project=args.project, name=args.name, exist_ok=args.exist_ok, resume=args.resume,
        pruning_params=args.pruning_params, criterion=args.criterion, round_to=args.round_to,
        pruning_config=args.pruning_config, seed=args.seed, scoring=args.scoring, from_scratch=args.from_scratch,
        distill=args.distill, distill_weight=args.distill_weight, feature_distill=args.feature_distill,
        feature_distill_weight=args.feature_distill_weight, criterion_options=criterion_options(args).to_dict(),
        max_val_images=args.max_val_images, sync_bn=args.sync_bn,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, cache_images=args.cache_images,
        optimizer="adam" if args.adam else "sgd", linear_lr=args.linear_lr, label_smoothing=args.label_smoothing,
        freeze=tuple(args.freeze or ()), autoanchor=not args.noautoanchor)


def check_args(args: argparse.Namespace) -> None:
    """Files and the output location before anything is loaded (hyp, data, weights and pruning parameters are
    read and checked by the trainer before the run folder is created)."""
    refuse_unsupported(args)
    wandb = [flag for flag in WANDB_FLAGS if getattr(args, flag.lstrip("-").replace("-", "_")) is not None]
    if wandb:
        print(f"note: {', '.join(wandb)}: Weights & Biases options, ignored (no W&B logging; results.csv and "
              f"results.png are written)", file=sys.stderr)
    if args.img and len(args.img) > 2:
        raise YoloPruneError(f"--img takes one size or YOLOv7's 'train test' pair, got {' '.join(map(str, args.img))}")
    if args.img and len(args.img) == 2 and args.img[1] != args.img[0]:
        print(f"note: --img {args.img[0]} {args.img[1]}: training and evaluation both use {args.img[0]}",
              file=sys.stderr)
    if args.resume:
        return
    for flag, value in (("--data", args.data), ("--weights", args.weights), ("--pruning-config", args.pruning_config)):
        if value:
            input_file(value, flag)
    output_dir(args.project, "--project")


def model_hook(args: argparse.Namespace):
    """The QAT hook for --qat, or for resuming a QAT run; None for float training."""
    from yolo_prune.quant.qat import QatHook, resume_hook

    if args.qat_calib_images != 64 and args.qat is None:
        raise YoloPruneError("--qat-calib-images: only valid with --qat")
    if args.resume:
        from yolo_prune.engine.train_state import find_last

        if args.qat is not None:
            raise YoloPruneError("--qat with --resume: a resumed run keeps its own quantization (leave --qat out)")
        return resume_hook(find_last(args.resume, args.project), args.img[0] if args.img else None)
    return QatHook(args.qat, args.img[0] if args.img else None, args.qat_calib_images) if args.qat else None


def run(args: argparse.Namespace) -> int:
    from yolo_prune.engine.trainer import train

    check_args(args)
    hook = model_hook(args)
    if args.pruning_iter > 1:
        from yolo_prune.pipeline.schedule import train_iteratively

        if hook is not None:
            raise YoloPruneError("--pruning-iter with --qat: prune iteratively first, then run --qat on the result")
        result = train_iteratively(settings_from_args(args), args.pruning_iter)
    else:
        result = train(settings_from_args(args), model_hook=hook)
    best = result.best_row
    if best is not None:
        print(f"best epoch {result.best_epoch}: mAP@.5 {best['mAP@.5']:.4f}, mAP@.5:.95 {best['mAP@.5:.95']:.4f}; "
              f"weights {result.best}")
    return 0
