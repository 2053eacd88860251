"""The views stage: a PNG grid of images next to the augmented views a recipe trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_artifact, load_dataset
from clt.stages.pretrain import read_recipe_raw
from clt.stages.probe import plain


def views(ctx: Context, recipe_path: str, overrides: list[str] = (), count: int = 8, n_views: int = 4) -> Outcome:
    """A PNG grid: original images next to the augmented views the recipe trains on.

    Example: views(ctx, "recipes/mnist_simclr.yaml").artifact.file("views.png")
    """
    from clt.recipe import recipe_from_dict

    recipe = recipe_from_dict(read_recipe_raw(recipe_path, list(overrides), None), recipe_path)
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    spec = {"stage": "views", "augment": plain(recipe.pretrain.augment), "objective": recipe.objective.name,
            "inputs": {"dataset": data_art.id}, "count": count, "n_views": n_views, "seed": recipe.seed}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        from clt.data.augment import BatchAugment, resolve_spec
        from clt.registry import OBJECTIVES

        data = load_dataset(data_art)
        aug_spec = resolve_spec(recipe.pretrain.augment, data.name, data.in_shape[0])
        augment = BatchAugment(aug_spec)
        shown = views_grid(data, augment, recipe.seed, tmp / "views.png", count, n_views,
                           f"{recipe.name}: original, then {n_views} views "
                           f"({OBJECTIVES[recipe.objective.name].views} per image per step)")
        return {"augment": plain(aug_spec), "metrics": {"images": shown}}

    outcome = produce(ctx, spec, "figure", build, name=recipe.name)
    ctx.report.info(f"picture: {outcome.artifact.path / 'views.png'}")
    return outcome


def views_grid(data, augment, seed: int, path: Path, count: int, n_views: int, title: str = "") -> int:
    """Draw `count` train images (seeded choice), each followed by `n_views` augmented views; the
    number of images drawn. Its own generator, so a training run's randomness is untouched."""
    import torch

    from clt import plots

    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data.train), generator=generator)[:count]
    originals = data.train.images[index.to(data.train.images.device)].float() / 255
    columns = [originals] + [augment(originals, generator) for _ in range(n_views)]
    rows = [torch.stack([col[i] for col in columns]).cpu().numpy() for i in range(len(index))]
    titles = [data.classes[int(data.train.labels[i])] if data.labeled else "" for i in index]
    plots.image_grid(rows, path, titles, title)
    return len(index)
