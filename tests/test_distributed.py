"""Multi-process training: gathered negatives, DDP-averaged gradients, `--nproc` and torchrun.

Everything runs on the CPU with the gloo backend. A step of 2 ranks × B images must equal a
step of 1 process × 2B images (loss and every parameter gradient); a 2-process digits
pretrain through the CLI gives an artifact that probes and evaluates like a 1-process one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS, FAST_PRETRAIN, ROOT, Ran, Trained, cli, clt_command, subprocess_env
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

WORLD = 2
PER_RANK = 4  # images per rank; the single process sees WORLD * PER_RANK
FEATURES = 16
# barlow_twins and vicreg compute over the global batch, as their papers do (NNCLR too, via its queue)
OBJECTIVES = ("simclr", "supcon", "pair", "barlow_twins", "vicreg")
VIEWS = {"simclr": 2, "supcon": 2, "pair": 1, "barlow_twins": 2, "vicreg": 2}
CPU = ["--device", "cpu"]  # gloo on the CPU, also where one GPU is visible (it cannot host 2 ranks)
PROBE_EPOCHS = "10"  # 1 probe epoch on a 1-epoch encoder gives ~0.38 accuracy; 10 give ~0.64


@pytest.fixture(autouse=True)
def one_thread():
    """Torch in this process on one thread too: two threads on two shared cores run ~10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def env1(**extra: str) -> dict[str, str]:
    """Subprocess environment: one thread per process (2 shared cores), no inherited store."""
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_proc(argv: list[str], timeout: float = 240, env: dict[str, str] | None = None) -> Ran:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env or env1())
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- shared model and data


def make_model() -> torch.nn.Module:
    from clt.models.heads import build_encoder

    torch.manual_seed(0)
    return build_encoder("pair_cnn", {"features": FEATURES}, (1, 8, 8))


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of WORLD * PER_RANK images and their labels (3 classes, so supcon has positives)."""
    generator = torch.Generator().manual_seed(1)
    n = WORLD * PER_RANK
    view1 = torch.randn(n, 1, 8, 8, generator=generator)
    view2 = torch.randn(n, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return view1, view2, labels


def loss_of(name: str, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    from clt.objectives.barlow_twins import barlow_twins
    from clt.objectives.ntxent import nt_xent
    from clt.objectives.pair import PairParams, pair_loss
    from clt.objectives.supcon import supervised_contrastive
    from clt.objectives.vicreg import VICRegParams, vicreg

    half = z.shape[0] // 2
    if name == "barlow_twins":
        return barlow_twins(z[:half], z[half:], 0.0051)
    if name == "vicreg":
        return vicreg(z[:half], z[half:], VICRegParams())
    if name == "simclr":
        return nt_xent(z, 0.5)
    if name == "supcon":
        return supervised_contrastive(z, labels, 0.1)
    return pair_loss(z, labels, PairParams())


def shard(name: str, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [view 1 of images lo..hi; view 2 of images lo..hi] (one view for pair) and labels."""
    view1, view2, labels = make_batch()
    if VIEWS[name] == 2:
        return torch.cat([view1[lo:hi], view2[lo:hi]]), labels[lo:hi].repeat(2)
    return view1[lo:hi], labels[lo:hi]


WORKER = """
import json, sys
import torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[2])
import test_distributed as t
from clt import train
from clt.distributed import from_environment

group = from_environment("cpu")
assert group is not None and group.world_size == t.WORLD
model = t.make_model()
ddp = group.wrap(model)
out, losses = {}, {}
for name in t.OBJECTIVES:
    model.zero_grad(set_to_none=True)
    lo, hi = group.rank * t.PER_RANK, (group.rank + 1) * t.PER_RANK
    x, y = t.shard(name, lo, hi)
    z = ddp(x)
    z_all = group.gather(z, t.VIEWS[name])
    y_all = group.gather_labels(y, t.VIEWS[name])
    loss = t.loss_of(name, z_all, y_all)
    loss.backward()
    losses[name] = float(loss.detach())
    out[name + "/z"] = z_all.detach().contiguous()
    out[name + "/y"] = y_all.contiguous()
    for key, param in model.named_parameters():
        out[name + "/grad/" + key] = param.grad.detach().clone().contiguous()
for name in t.QUEUED:
    parts, x, y = t.queued_parts(name, group.rank * t.PER_RANK, (group.rank + 1) * t.PER_RANK)
    loop = t.QueueLoop(group, name)
    outputs = train._gathered(loop, parts.outputs(model(x), y, x))
    parts.after_step(model, outputs, 1, 10, train._queue_gather(loop))
    out[name + "/queue"] = parts.queue.valid().contiguous()
save_file(out, f"{sys.argv[1]}/rank{group.rank}.safetensors")
with open(f"{sys.argv[1]}/rank{group.rank}.json", "w") as fh:
    json.dump({"losses": losses, "rank": group.rank, "main": group.is_main}, fh)
group.barrier()
"""


# the queue methods: MoCo enqueues the target's keys (local loss, gathered keys), NNCLR the online
# projections (gathered for the loss already); every rank's queue must hold every rank's rows
QUEUED = ("moco", "nnclr")


class QueueLoop:
    """The two fields of the training loop that decide how rows reach the loss and the queue."""

    def __init__(self, distributed, name: str):
        from clt.registry import OBJECTIVES as REGISTRY

        self.distributed, self.objective = distributed, REGISTRY[name]


def queued_parts(name: str, lo: int, hi: int):
    """Method parts (target, queue) of `name` on the shared model, and the shard's two views."""
    from clt.methods import MethodParts
    from clt.registry import OBJECTIVES as REGISTRY

    entry = REGISTRY[name]
    parts = MethodParts(entry, entry.params(queue_size=64), make_model(), FEATURES, 0)
    x, y = shard("simclr", lo, hi)
    return parts, x, y


@pytest.fixture(scope="module")
def two_rank_step(tmp_path_factory) -> Path:
    """One step of every objective on 2 gloo ranks; each rank writes what it saw."""
    out = tmp_path_factory.mktemp("ranks")
    script = out / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    procs = []
    for rank in range(WORLD):
        env = env1(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(WORLD), RANK=str(rank),
                   LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), str(Path(__file__).parent)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail("the 2-rank worker did not finish in 180 s")
        assert proc.returncode == 0, err
    return out


def single_process_step(name: str) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model = make_model()
    x, y = shard(name, 0, WORLD * PER_RANK)
    z = model(x)
    loss = loss_of(name, z, y)
    loss.backward()
    return float(loss.detach()), z.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def test_regroup_puts_views_of_all_ranks_together():
    from clt.distributed import _regroup

    # rank r holds [v1 of its images; v2 of its images]; the global tensor is [all v1; all v2]
    rank0 = torch.tensor([[0.0], [1.0], [10.0], [11.0]])  # images 0, 1: view 1 then view 2
    rank1 = torch.tensor([[2.0], [3.0], [12.0], [13.0]])  # images 2, 3
    merged = _regroup(torch.cat([rank0, rank1]), world=2, views=2)
    assert merged.flatten().tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert torch.equal(_regroup(torch.cat([rank0, rank1]), world=2, views=1), torch.cat([rank0, rank1]))
    assert torch.equal(_regroup(rank0, world=1, views=2), rank0)


def test_from_environment_is_none_for_one_process(monkeypatch):
    from clt.distributed import from_environment

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_environment("cpu") is None


@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_ranks_equal_one_process_on_the_global_batch(two_rank_step: Path, name: str):
    loss, z, grads = single_process_step(name)
    ranks = [load_file(str(two_rank_step / f"rank{r}.safetensors")) for r in range(WORLD)]
    infos = [json.loads((two_rank_step / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [i["main"] for i in infos] == [True, False]
    _, _, labels = make_batch()
    expected_labels = labels.repeat(VIEWS[name])
    for rank, (saved, info) in enumerate(zip(ranks, infos)):
        # the gathered tensor is the single process's batch, rows in the same order
        torch.testing.assert_close(saved[f"{name}/z"], z, rtol=1e-5, atol=1e-6)
        assert torch.equal(saved[f"{name}/y"], expected_labels)
        assert info["losses"][name] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"rank {rank}"
        assert set(k.split("/grad/")[1] for k in saved if "/grad/" in k and k.startswith(name)) == set(grads)
        # Barlow Twins standardises over the batch, so a bias before it has a true gradient of ~0
        # and float noise there is measured against the objective's largest gradient
        atol = max(1e-6, 1e-5 * max(float(g.abs().max()) for g in grads.values()))
        for key, grad in grads.items():
            assert grad.abs().sum() > 0, f"{name}: {key} has no gradient in the reference step"
            torch.testing.assert_close(saved[f"{name}/grad/{key}"], grad, rtol=1e-4, atol=atol,
                                       msg=lambda m, k=key, r=rank: f"{name} rank {r} {k}: {m}")


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def two_process_store(tmp_path_factory) -> tuple[Path, Ran]:
    root = tmp_path_factory.mktemp("nproc") / "store"
    ran = run_proc(clt_command() + ["--artifacts", str(root), "pretrain", str(DIGITS), "--nproc", "2",
                                    *CPU, *FAST_PRETRAIN])
    return root, ran


def _evaluate(root: Path, encoder: str) -> float:
    probe = cli(root, "probe", encoder, "--epochs", PROBE_EPOCHS).ok().id
    evaluation = cli(root, "--json", "evaluate", probe).ok().json()
    return evaluation["accuracy"]


def test_two_process_pretrain_probes_like_one_process(two_process_store, store_copy: Trained):
    from clt.store import Store

    root, ran = two_process_store
    ran.ok()
    encoder = ran.id  # exactly one id on stdout, although two ranks ran
    assert "Traceback" not in ran.stderr
    store = Store(root)
    art = store.get(encoder)
    assert art.kind == "encoder"
    assert art.manifest["device"].endswith("2 processes")
    assert store.verify(encoder) == []
    # the process count stays out of the address: the 1-process run of the same recipe has the same id
    assert encoder == store_copy.encoder
    single = Store(store_copy.root).get(store_copy.encoder)
    assert "processes" not in single.manifest["device"]
    # same data, same initial weights, the global batch split over ranks: equal up to float
    # reordering (DDP averaging, gathered losses), which Adam amplifies a little over 22 steps
    ours = load_file(str(art.file("encoder.safetensors")))
    theirs = load_file(str(single.file("encoder.safetensors")))
    assert set(ours) == set(theirs)
    if (single.manifest["device"], single.manifest["precision"]) == ("cpu", art.manifest["precision"]):
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=2e-2, msg=lambda m, k=key: f"{k}: {m}")
        assert art.metrics["final_loss"] == pytest.approx(single.metrics["final_loss"], abs=5e-3)
    accuracies = [_evaluate(root, encoder), _evaluate(store_copy.root, store_copy.encoder)]
    for accuracy in accuracies:
        assert isinstance(accuracy, float) and accuracy > 0.5  # chance is 0.1
    assert abs(accuracies[0] - accuracies[1]) < 0.1


def test_rerun_of_a_two_process_pretrain_prints_one_id(two_process_store):
    root, first = two_process_store
    first.ok()
    again = run_proc(clt_command() + ["--artifacts", str(root), "pretrain", str(DIGITS), "--nproc", "2",
                                      *CPU, *FAST_PRETRAIN])
    again.ok()
    assert again.stdout.split() == [first.id]


def test_batch_that_does_not_split_is_an_error(store_copy: Trained, monkeypatch):
    """Checked before anything collective, so one process posing as rank 0 of 2 sees it."""
    import clt.distributed
    from clt.distributed import Distributed

    fake = Distributed(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(clt.distributed, "from_environment", lambda *args, **kwargs: fake)
    ran = cli(store_copy.root, "pretrain", str(DIGITS), *FAST_PRETRAIN, "--set", "pretrain.batch_size=63")
    assert ran.exit_code == 2 and ran.exception is None, ran.stderr
    assert "does not split over 2 processes" in ran.stderr and "multiple of --nproc" in ran.stderr


def test_a_failing_rank_fails_the_launch_cleanly(tmp_path: Path):
    ran = run_proc(clt_command() + ["--artifacts", str(tmp_path / "store"), "pretrain", str(tmp_path / "nope.yaml"),
                                    "--nproc", "2"])
    assert ran.exit_code == 2, ran.stderr
    assert "does not exist" in ran.stderr and "2-process run failed" in ran.stderr
    assert "Traceback" not in ran.stderr and ran.stdout.strip() == ""


def test_ctrl_c_stops_every_rank_and_a_torchrun_rerun_resumes(two_process_store, tmp_path: Path):
    """Ctrl-C (SIGINT to the process group) mid-run: exit 130, checkpoint kept. The same command,
    torchrun style (`python -m torch.distributed.run --nproc_per_node 2 --standalone -m clt ...`),
    resumes on both ranks and ends with the uninterrupted `--nproc 2` run's weights, bit for bit."""
    from clt.store import Store

    root = tmp_path / "store"
    args = ["--artifacts", str(root), "pretrain", str(DIGITS), *CPU, *FAST_PRETRAIN,
            "--set", "pretrain.checkpoint_every=5"]
    proc = subprocess.Popen(clt_command() + args + ["--nproc", "2"], cwd=ROOT, env=env1(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list(root.glob("tmp/*.work/checkpoint.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.strip() == "" and "Traceback" not in err and "error:" not in err
    assert "interrupted" in err
    assert list(root.glob("tmp/*.work/checkpoint.json")), "the checkpoint is gone"
    assert [a for a in Store(root).all() if a.kind == "encoder"] == []
    again = run_proc([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                      "-m", "clt", *args]).ok()
    assert "resumed from step" in again.stderr and "Traceback" not in again.stderr
    art = Store(root).get(again.id)  # exactly one id on stdout
    assert art.manifest["device"].endswith("2 processes")
    assert Store(root).verify(again.id) == []
    assert not list((root / "tmp").glob("*.work/*"))  # checkpoints removed once finished
    reference_root, reference = two_process_store
    ours = load_file(str(art.file("encoder.safetensors")))
    theirs = load_file(str(Store(reference_root).get(reference.ok().id).file("encoder.safetensors")))
    for key in theirs:  # checkpoint_every changes the id, not the arithmetic
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_one_gpu_cannot_host_two_ranks(monkeypatch):
    from clt.distributed import from_environment
    from clt.errors import CltError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    with pytest.raises(CltError) as caught:
        from_environment("auto")  # before: torch.cuda.set_device(1) -> "invalid device ordinal"
    assert "2 GPUs" in str(caught.value) and "--device cpu" in str(caught.value)


@pytest.mark.parametrize("name", QUEUED)
def test_every_rank_queues_the_rows_of_every_rank_as_one_process_does(two_rank_step: Path, name: str):
    model = make_model()
    parts, x, y = queued_parts(name, 0, WORLD * PER_RANK)
    parts.after_step(model, parts.outputs(model(x), y, x), 1, 10)
    expected = parts.queue.valid()
    assert expected.shape == (WORLD * PER_RANK, FEATURES)  # view 1 of all 8 images, once each
    for rank in range(WORLD):
        queue = load_file(str(two_rank_step / f"rank{rank}.safetensors"))[name + "/queue"]
        torch.testing.assert_close(queue, expected, atol=1e-5, rtol=1e-4)
