"""Every objective on CIFAR-10 at equal cost: the same encoder, 30 minutes of pretraining each.

Each objective trains the compact ResNet-20 (width 16) of `cifar10_simclr_cpu.yaml` with the
SimCLR CIFAR-10 augmentations, batch 256 and SGD with a cosine schedule, from its own recipe
(`cifar10_<name>_cpu.yaml`; the older objectives get theirs from the table below). A budget in
seconds becomes a number of epochs by timing two short epochs first (10 steps each, the
second one counts), so the cosine schedule still runs to its end; the wall time actually spent
is reported beside the accuracy. Then the linear probe of the recipe on all labels and the
200-NN accuracy of the full test split against all 50,000 train embeddings, plus the online
kNN curve (2,000 test images against 10,000 train images) from the monitor.

One JSON file per objective, seed and machine class goes to bench/results/equal_budget/, so a
table can be filled over several days; existing results are kept unless --force. Thirty
minutes buy about four times more epochs on a CPU with native bf16 (AVX-512 BF16 or AMX) than on
one without, so rows are only compared within one machine class: the tables of every result found
(one per class) are rewritten to bench/results/equal_budget.md after each run, and the online
curves of seed 0 are drawn in docs/img/equal_budget_curves.png, one panel per class.

    python bench/equal_budget.py simclr moco --budget 1800 --seed 0
    python bench/equal_budget.py --untrained      # only the floor: the encoder as initialised
    python bench/equal_budget.py --table          # only rewrite the table
    python bench/equal_budget.py simclr --budget 7200 --monitor-points 10 --results simclr_2h
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from images import cpu_model
from published import Run, ensure, trial_step_seconds
from records import STUDIES, command_line, git_commit, write_record

import clt
from clt.atomic import written_aside
from clt.devices import pick_device, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH = 256  # SHARED_SETUP's
TRAIN_IMAGES = 50000
UNTRAINED = "untrained"  # the baseline row's name: no pretraining at all

# objective -> (recipe, overrides that put it on the shared encoder, augmentation and batch)
SHARED_SETUP = [f"pretrain.batch_size={BATCH}", "pretrain.augment.preset=simclr_cifar",
                "pretrain.progressive_resize=[]"]
OBJECTIVES: dict[str, tuple[str, list[str]]] = {
    "simclr": ("cifar10_simclr_cpu", []),
    "moco": ("cifar10_moco_cpu", []),
    "byol": ("cifar10_byol_cpu", []),
    "simsiam": ("cifar10_simsiam_cpu", []),
    "barlow_twins": ("cifar10_barlow_twins_cpu", []),
    "vicreg": ("cifar10_vicreg_cpu", []),
    "nnclr": ("cifar10_nnclr_cpu", []),
    "supcon": ("cifar10_supcon", []),
    "triplet": ("cifar10_triplet", ["model.projection=[64, 64]", "pretrain.snapshot_every=0",
                                    "probe={head: linear, epochs: 30, batch_size: 256, lr: 0.001}"]),
    "pair": ("cifar10_pair_cpu", []),
    "cosine_pair": ("cifar10_simclr_cpu", ["objective={name: cosine_pair}"]),
}


def machine_class(result: dict) -> str:
    """'bf16', 'fp32' or e.g. 'cuda-bf16': where and in what precision a result trained, which sets
    what 30 minutes buy. The first results carry no such field; they trained on a CPU in their
    `precision`."""
    return str(result.get("machine", result["precision"]))


def planned_machine_class(args) -> str:
    """The machine class a run here will have: the precision `auto` (or a --set override) trains in,
    prefixed by the device type off the CPU, so GPU rows never join a CPU table."""
    device = pick_device(args.device)
    asked = [o.split("=", 1)[1] for o in args.set if o.startswith("pretrain.precision=")]
    precision = resolve_precision(asked[-1] if asked else "auto", device)
    return precision if device.type == "cpu" else f"{device.type}-{precision}"


def result_path(out: Path, name: str, seed: int, machine: str) -> Path:
    return out / f"{name}-seed{seed}-{machine}.json"


def epoch_seconds(run: Run, recipe: Path, overrides: list[str]) -> float:
    """Seconds per full-size epoch, from the second of two 10-step epochs (the first warms up)."""
    return trial_step_seconds(recipe, overrides, BATCH, **run.opts()) * (TRAIN_IMAGES // BATCH)


def run_one(run: Run, name: str, machine: str, args) -> dict:
    recipe_name, extra = OBJECTIVES[name]
    recipe = ROOT / "recipes" / f"{recipe_name}.yaml"
    overrides = [*SHARED_SETUP, *extra, *args.set, f"seed={args.seed}"]
    # a fixed number of epochs means the same on every CPU; a budget in seconds is planned by a trial
    per_epoch = 0.0 if args.epochs else epoch_seconds(run, recipe, overrides)
    epochs = args.epochs or max(1, round(args.budget / per_epoch))
    every = max(1, epochs // args.monitor_points)
    schedule = [f"pretrain.epochs={epochs}", f"pretrain.monitor={{knn: 200, every: {every}, train: 10000, "
                                             "test: 2000}"]
    print(f"== {name}: {epochs} epochs" + (f" ({per_epoch:.0f} s per epoch in {args.budget} s)" if per_epoch else ""),
          file=sys.stderr, flush=True)
    started = time.time()
    row = {"objective": name, "recipe": recipe_name, "overrides": overrides + schedule, "seed": args.seed,
           "budget_s": None if args.epochs else args.budget, "trial_epoch_s": round(per_epoch, 1), "epochs": epochs}
    try:
        encoder = clt.pretrain(recipe, overrides=[*overrides, *schedule], **run.opts())
    except clt.DivergenceError as error:  # a row that diverges is a result too; the other rows still run
        print(f"== {name}: diverged: {error}", file=sys.stderr, flush=True)
        return {**row, "diverged": error.message.split(";")[0], "linear": None, "knn200": None, "curve": [],
                "pretrain_s": round(time.time() - started, 1),
                **provenance(machine, machine.rsplit("-", 1)[-1], started)}
    probe, linear, knn = read_out(run, encoder)
    history = json.loads(encoder.file("history.json").read_text())
    return {
        **row,
        "pretrain_s": encoder.manifest.get("wall_time_s"), "linear": linear, "knn200": knn,
        "curve": [[h["seconds"], h["knn_accuracy"]] for h in history if "knn_accuracy" in h],
        "final_loss": history[-1]["loss"], "final_spread": history[-1]["embedding_spread"],
        "final_rank": history[-1].get("embedding_rank"), "final_rank_of": history[-1].get("embedding_dim"),
        "collapse_warning_at_end": bool(history[-1].get("collapse_warning")),
        "epoch_records": [{k: h.get(k) for k in ("epoch", "loss", "lr", "embedding_spread", "embedding_rank",
                                                 "knn_accuracy", "seconds")} for h in history],
        "monitor_s": round(sum(h.get("monitor_seconds", 0.0) for h in history), 1),
        "ids": {"encoder": encoder.id, "probe": probe.id},
        **provenance(machine, encoder.manifest.get("precision"), started),
    }


def provenance(machine: str, precision: str | None, started: float) -> dict:
    """Where, in what precision and by which command a row was made, and its seconds in all."""
    return {"cpu": cpu_model(), "machine": machine, "precision": precision, "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(),
            "total_s": round(time.time() - started, 1),
            "command": "python bench/equal_budget.py " + " ".join(sys.argv[1:])}


def record_header(result: dict, args) -> dict:
    """What bench/records.py's write_record needs to head a row's record: its study, title, command,
    protocol and figures (the date, commit and machine it stamps itself)."""
    study = args.results if args.results in STUDIES else "equal_budget"
    name = "untrained encoder (no pretraining)" if result["objective"] == UNTRAINED else result["objective"]
    budget = f"{result['epochs']} epochs of the shipped recipe" if args.epochs else f"a {args.budget} s budget"
    figures = {"epochs": {"path": "epochs", "format": "num", "digits": 0},
               "200-NN %": {"path": "knn200", "format": "pct", "digits": 2},
               "linear %": {"path": "linear", "format": "pct", "digits": 2}}
    if result.get("final_rank") is not None:
        of = result.get("final_rank_of") or 64  # the projection's width: 256 for VICReg's and Barlow Twins' heads
        figures[f"effective rank at the end (of {of})"] = {"path": "final_rank", "format": "num", "digits": 1}
    figures["pretrain s"] = {"path": "pretrain_s", "format": "num", "digits": 0}
    return {"study": study, "title": f"{name}, seed {result['seed']}, {result['precision']}",
            "command": result["command"],
            "protocol": f"CIFAR-10, ResNet-20 w16, {budget}, batch 256; linear probe (30 epochs, all labels) "
                        "and 200-NN of 10,000 test images against all 50,000 train embeddings",
            "figures": figures}


def read_out(run: Run, encoder) -> tuple:
    """The probe, its linear accuracy and the 200-NN accuracy: how every row is scored."""
    probe = clt.probe(encoder.id, **run.opts())
    linear = clt.evaluate(probe.id, **run.opts()).metrics["accuracy"]
    return probe, linear, clt.evaluate(probe.id, knn=200, **run.opts()).metrics["knn_accuracy"]


def run_untrained(run: Run, machine: str, args) -> dict:
    """The floor every row is read against: the shared encoder as initialised (`pretrain.epochs=0`,
    the seed's weights), through the same linear probe and 200-NN vote."""
    recipe_name, extra = OBJECTIVES["simclr"]
    overrides = [*SHARED_SETUP, *extra, *args.set, f"seed={args.seed}", "pretrain.epochs=0"]
    started = time.time()
    encoder = clt.pretrain(ROOT / "recipes" / f"{recipe_name}.yaml", overrides=overrides, **run.opts())
    probe, linear, knn = read_out(run, encoder)
    return {
        "objective": UNTRAINED, "recipe": recipe_name, "overrides": overrides, "seed": args.seed, "budget_s": 0,
        "trial_epoch_s": 0.0, "epochs": 0, "pretrain_s": 0.0, "curve": [], "linear": linear, "knn200": knn,
        "ids": {"encoder": encoder.id, "probe": probe.id},
        **provenance(machine, encoder.manifest.get("precision"), started),
    }


def results_by_machine(out: Path) -> dict[str, list[dict]]:
    by_machine: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        result = json.loads(path.read_text())
        by_machine.setdefault(machine_class(result), []).append(result)
    return by_machine


def write_table(out: Path) -> str:
    """One table per machine class (bf16 first), each with its machine line and missing objectives."""
    tables = [machine_table(out, machine, rows) for machine, rows in sorted(results_by_machine(out).items())]
    text = "\n".join(tables)
    with written_aside(RESULTS / f"{out.name}.md") as tmp:
        tmp.write_text(text)
    return text


def machine_table(out: Path, machine: str, rows: list[dict]) -> str:
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["objective"], []).append(r)
    lines = [f"## Trained in {machine}", "",
             "| objective | seeds | epochs | pretrain wall time | 200-NN % | linear % | online 200-NN at the end % |",
             "|---|---|---|---|---|---|---|"]
    scored = {n: [r for r in rs if not r.get("diverged")] for n, rs in by_name.items()}
    order = sorted((n for n in scored if scored[n]),
                   key=lambda n: -sum(r["knn200"] for r in scored[n]) / len(scored[n]))
    for name in order:
        rs = scored[name]
        def mean(key: str, rs: list[dict] = rs) -> float:
            return sum(r[key] for r in rs) / len(rs)

        online = [r["curve"][-1][1] for r in rs if r["curve"]]
        online_text = f"{100 * sum(online) / len(online):.1f}" if online else "–"
        shown = f"{name} (no pretraining)" if name == UNTRAINED else name
        lines.append(f"| {shown} | {len(rs)} | {'/'.join(str(r['epochs']) for r in rs)} | "
                     f"{mean('pretrain_s') / 60:.1f} min | {100 * mean('knn200'):.2f} | {100 * mean('linear'):.2f} | "
                     f"{online_text} |")
    for r in (r for r in rows if r.get("diverged")):  # after the scored rows, with what stopped them
        lines.append(f"| {r['objective']} (seed {r['seed']}) | – | {r['epochs']} planned | "
                     f"{r['pretrain_s'] / 60:.1f} min | diverged: {r['diverged']} | – | – |")
    cpus = sorted({r["cpu"] for r in rows})
    text = "\n".join(lines) + f"\n\nMachine: {', '.join(cpus)}; precision {machine}.\n"
    if out.name == "equal_budget":  # the table of every objective; other folders hold single runs
        text += "Missing objectives: " + (", ".join(n for n in OBJECTIVES if n not in by_name) or "none") + ".\n"
    return text


def plot_curves(out: Path, path: Path) -> None:
    """Online 200-NN accuracy, one line per objective (seed 0): against epochs where the runs were
    fixed in epochs (their wall times shared the cores with other work), else against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_machine = sorted(results_by_machine(out).items())
    names = list(OBJECTIVES)  # one colour and line style per objective in every panel
    fig, axes = plt.subplots(1, len(by_machine), figsize=(6 * len(by_machine), 4), sharey=True, squeeze=False)
    for ax, (machine, rows) in zip(axes[0], by_machine):
        rows = [r for r in rows if r["seed"] == 0 and r.get("curve")]
        in_epochs = all(r.get("budget_s") is None and r.get("epoch_records") for r in rows)
        for r in rows:
            x, accuracy = zip(*([(h["epoch"], h["knn_accuracy"]) for h in r["epoch_records"]
                                 if h.get("knn_accuracy") is not None] if in_epochs
                                else [(s / 60, a) for s, a in r["curve"]]))
            index = names.index(r["objective"]) if r["objective"] in names else len(names)
            ax.plot(x, [100 * a for a in accuracy], marker="o", label=r["objective"],
                    color=plt.get_cmap("tab10")(index % 10), linestyle="-" if index < 10 else "--")
        ax.set(xlabel="pretraining epochs" if in_epochs else "pretraining minutes",
               ylabel="online 200-NN accuracy %", title=f"CIFAR-10, ResNet-20 w16: {out.name}, trained in {machine}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with written_aside(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objectives", nargs="*", help=f"default: all of {', '.join(OBJECTIVES)}")
    parser.add_argument("--budget", type=float, default=1800.0, help="pretraining seconds per objective")
    parser.add_argument("--epochs", type=int, default=0,
                        help="train this many epochs instead of planning them from --budget (the fixed protocol)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monitor-points", type=int, default=5, help="online kNN scores per run")
    parser.add_argument("--results", default="equal_budget",
                        help="folder under bench/results/ (and name of its table and curve picture)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="one more recipe override for every objective, e.g. pretrain.channels_last=true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--force", action="store_true", help="rerun objectives that already have a result")
    parser.add_argument("--untrained", action="store_true",
                        help="also score the encoder as initialised (no pretraining), the floor of the table")
    parser.add_argument("--table", action="store_true", help="only rewrite the table and the curve picture")
    args = parser.parse_args()
    unknown = [n for n in args.objectives if n not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}: choose from {', '.join(OBJECTIVES)}")
    out = RESULTS / args.results
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run = Run(args.artifacts, args.device)
        ensure(run, "cifar10")
        machine = planned_machine_class(args)
        names = args.objectives or ([] if args.untrained else list(OBJECTIVES))  # --untrained alone: only the floor
        for name in names + [UNTRAINED] * args.untrained:
            path = result_path(out, name, args.seed, machine)
            if path.exists() and not args.force:
                print(f"== {name}: kept {path.name}", file=sys.stderr)
                continue
            result = run_untrained(run, machine, args) if name == UNTRAINED else run_one(run, name, machine, args)
            result["command"] = command_line("equal_budget.py", STORE=args.artifacts)  # no machine paths
            write_record(path, result, **record_header(result, args))
            print(write_table(out), flush=True)
    print(write_table(out))
    if any(r["seed"] == 0 for rows in results_by_machine(out).values() for r in rows):
        plot_curves(out, ROOT / "docs" / "img" / f"{args.results}_curves.png")


if __name__ == "__main__":
    main()
