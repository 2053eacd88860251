"""Baselines in the same tool: the recipe's encoder trained from scratch, logistic regression on pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.errors import DataError
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_artifact, load_dataset
from clt.stages.pretrain import read_recipe_raw
from clt.stages.probe import plain
from clt.stages.weights import save_trained_head


def baseline_scratch(ctx: Context, recipe_path: str, overrides: list[str] = (), seed: int | None = None,
                     augment: str = "none") -> Outcome:
    """The recipe's encoder plus its probe head trained from scratch, supervised, on the probe's
    labels; with an `augment` preset each batch is freshly augmented (a fairer baseline on few labels).

    Example: baseline_scratch(ctx, "recipes/mnist_simclr.yaml", ["probe.labels=100"], augment="digits")
    """
    from clt.data.augment import check_preset
    from clt.recipe import recipe_from_dict

    check_preset(augment, "--augment preset")
    recipe = recipe_from_dict(read_recipe_raw(recipe_path, list(overrides), seed), recipe_path)
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    spec = {"stage": "baseline-scratch", "model": plain(recipe.model), "probe": plain(recipe.probe),
            "inputs": {"dataset": data_art.id}, "seed": recipe.seed,
            **({"augment": augment} if augment != "none" else {})}  # unaugmented baselines keep their address
    return produce(ctx, spec, "probe", lambda tmp, _id: _supervised_build(
        ctx, recipe.model.encoder, recipe.model.params, recipe.probe, data_art, recipe.seed, tmp,
        "scratch supervised", augment), name=f"{recipe.name}-scratch")


def baseline_logreg(ctx: Context, dataset: str, overrides: list[str] = (), seed: int = 0) -> Outcome:
    """Multi-class logistic regression on the standardised pixels.

    Example: baseline_logreg(ctx, "cifar10", ["epochs=15"])
    """
    from clt.recipe import ProbeConfig, apply_override, from_dict

    raw = {"head": "linear", "epochs": 20, "batch_size": 256, "lr": 0.001, "weight_decay": 0.0}
    for item in overrides:
        apply_override(raw, item.removeprefix("probe."), "baseline logreg")
    cfg = from_dict(ProbeConfig, raw, "baseline logreg options", "probe")
    data_art = dataset_artifact(ctx, dataset)
    spec = {"stage": "baseline-logreg", "probe": plain(cfg), "inputs": {"dataset": data_art.id}, "seed": seed}
    return produce(ctx, spec, "probe", lambda tmp, _id: _supervised_build(
        ctx, "pixels", {}, cfg, data_art, seed, tmp, "logistic regression on pixels"), name=f"{dataset}-logreg")


def _supervised_build(ctx: Context, encoder_name: str, encoder_params: dict[str, Any], cfg, data_art, seed: int,
                      tmp: Path, protocol: str, augment: str = "none") -> dict[str, Any]:
    from clt.devices import describe, pick_device, seed_everything
    from clt.models.heads import build_encoder
    from clt.probing import build_head, few_label_subset, finetune

    device = pick_device(ctx.device)
    seed_everything(seed)
    data = load_dataset(data_art)
    if not data.labeled:
        raise DataError(f"dataset '{data.name}' has no labels: a supervised baseline needs them",
                        "pick a labeled dataset")
    encoder = build_encoder(encoder_name, encoder_params, data.in_shape).to(device)
    index = few_label_subset(data.train.labels, seed, cfg.labels_per_class, cfg.labels)
    head = build_head(cfg, encoder.out_dim, len(data.classes)).to(device)
    augmented = f", {augment} augmentation" if augment != "none" else ""
    ctx.report.info(f"baseline ({protocol}{augmented}): {encoder_name} + {cfg.head} head, {len(index)} labels, "
                    f"{cfg.epochs} epochs")
    # one learning rate for both parts: nothing here is pretrained
    cfg = type(cfg)(**{**plain(cfg), "finetune_lr_scale": 1.0})
    history = finetune(encoder, head, data.to(device), index.to(device), cfg, device, "fp32", seed,
                       lambda r: ctx.report.info(f"epoch {r['epoch']}: loss {r['loss']:.4f}, "
                                                 f"train accuracy {r['train_accuracy']:.4f}"), augment)
    save_trained_head(tmp, head, history, f"{protocol}: loss", encoder)
    return {
        "device": describe(device),
        "encoder": {"name": encoder_name, "params": encoder_params, "in_shape": list(data.in_shape),
                    "out_dim": encoder.out_dim},
        "head": {"kind": cfg.head, "in_dim": encoder.out_dim, "classes": len(data.classes), "hidden": cfg.hidden},
        "subset": index.tolist() if (cfg.labels_per_class or cfg.labels) else "all",
        "protocol": {"protocol": protocol, "epochs": cfg.epochs, "labels_used": int(len(index)), "final_epoch": True,
                     **({"augment": augment} if augment != "none" else {})},
        "metrics": {"train_accuracy": history[-1]["train_accuracy"] if history else None,
                    "labels_used": int(len(index))},
    }
