"""Training on several devices: torchrun workers under DDP, here on CPU with gloo (NCCL with -m gpu).

Every worker draws the same permutation and augmentation numbers and trains on its rows of each
global batch; DDP averages the workers' gradients, and each worker's loss is weighted by its share
of the batch, so every step's gradient is the single-process gradient of the whole batch. Where
batch norm is frozen (linear_probe), two workers therefore train the model one process trains, up
to the order of float sums. On CPU workers batch norm in train mode uses per-worker statistics
(PyTorch's SyncBatchNorm is CUDA-only), so strategies that train the backbone are compared
structurally here and numerically on GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from adaptflow.config import ConfigError
from adaptflow.distributed import World, devices_problem
from adaptflow.finetune import fit_job as real_fit_job
from adaptflow.launch import FitJob, WorkerFailed
from conftest import Crash, crash_at, tiny_config

TESTS = Path(__file__).resolve().parent

#: Relative tolerance of a two-worker run against one process (same global batches, see the module doc):
#: what the order of float sums leaves, with a wide margin. Measured on 2 CPU cores: losses and accuracies
#: equal to the last bit, weights within 7.5e-6 of each tensor's largest value (Adam divides each
#: gradient by its own running size, which magnifies summation noise in near-zero gradients).
RTOL = 1e-4


@pytest.fixture
def workers_import_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers build their job with functions of this module: let them import it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def _finetune(cfg, run_dir: Path, on_epoch=None):  # noqa: ANN001, ANN202 - a RunConfig; the stage's result
    from adaptflow.finetune import finetune
    from adaptflow.weights import fetch_pretrained

    return finetune(cfg.finetune, cfg.data, fetch_pretrained(cfg.pretrained.uri), run_dir, on_epoch)


def _weights(path: str) -> dict[str, torch.Tensor]:
    from adaptflow.models import load_checkpoint

    return load_checkpoint(path)[0].state_dict()


# --- one process and two workers train the same model -------------------------------------------


def test_two_cpu_workers_match_one_process_and_resume_after_a_crash(project: Path) -> None:
    from adaptflow.io import read_json

    # Each worker applies its rows of the global batch's draws; the pull toward the start (l2sp) is in every worker's loss,
    # and a resumed run pulls toward the start it saved.
    augment = ("finetune.augment=true", "finetune.low_resolution=0.5", "finetune.l2sp=50")
    cfg = tiny_config("finetune.device=cpu", "finetune.strategy=linear_probe", *augment)
    single = _finetune(cfg, project / "single")
    expected = read_json(project / "single" / "history.json")

    ddp = tiny_config("finetune.device=cpu", "finetune.strategy=linear_probe", *augment, "finetune.devices=2")
    run_dir, relayed = project / "ddp", []
    with pytest.raises(Crash):  # the parent's epoch callback fails: the workers are stopped, nothing is published
        _finetune(ddp, run_dir, crash_at(1))
    assert not (run_dir / "model.pt").exists() and (run_dir / "train_state.pt").exists()
    # What a resume starts from; the train_state.json note beside it is written after, so a stop between the two leaves it behind.
    resumed_from = torch.load(run_dir / "train_state.pt", weights_only=True)["epoch"]
    assert resumed_from >= 1

    trained = _finetune(ddp, run_dir, lambda epoch, record: relayed.append((epoch, record)))
    history = read_json(run_dir / "history.json")
    assert [epoch for epoch, _ in relayed] == list(range(resumed_from + 1, 4))  # epochs this run trained, relayed by rank 0
    assert [record for _, record in relayed] == history[resumed_from:]
    for key in ("train_loss", "train_accuracy"):
        assert [h[key] for h in history] == pytest.approx([h[key] for h in expected], rel=RTOL), key
    mine, theirs = _weights(trained.path), _weights(single.path)
    for key, value in theirs.items():
        assert (mine[key].double() - value.double()).abs().max() <= RTOL * value.double().abs().max(), key
    assert not (run_dir / "train_state.pt").exists() and not (run_dir / "workers").exists()


def checked_job(spec: dict) -> FitJob:
    """The fine-tune job, checking after training that every worker holds the same weights."""
    job = real_fit_job(spec)
    return InSyncJob(**vars(job))


class InSyncJob(FitJob):
    def run(self, on_epoch=None, progress: bool = True) -> list[dict[str, float]]:  # noqa: ANN001 - an epoch callback
        history = super().run(on_epoch, progress)
        world = World.current()
        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        gathered = [torch.zeros_like(checksum) for _ in range(world.size)]
        torch.distributed.all_gather(gathered, checksum)
        if not all(torch.equal(gathered[0], g) for g in gathered):
            raise AssertionError("the workers' parameters diverged: a phase trained parameters DDP did not sync")
        return history


def test_backbone_phases_keep_the_workers_in_sync(project: Path, workers_import_tests, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.finetune as finetune_module

    monkeypatch.setattr(finetune_module, "fit_job", checked_job)
    before = _weights(str(project / "models" / "source" / "model.pt"))
    cfg = tiny_config("finetune.device=cpu", "finetune.devices=2", "finetune.epochs=2")  # lp_ft: the head, then everything
    trained = _weights(_finetune(cfg, project / "run").path)
    assert not torch.equal(before["backbone.conv1.weight"], trained["backbone.conv1.weight"])  # the backbone trained too


def test_pretrain_publishes_what_two_workers_trained(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptflow.io import read_json
    from adaptflow.pretrain import pretrain

    temp = project / "system-temp"  # what the workers and torchrun see as the system temp folder
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))

    cfg = tiny_config("pretrain.device=cpu", "pretrain.devices=2", "pretrain.arch=small_cnn", "pretrain.output=models/source-ddp")
    relayed: list[dict] = []
    published = pretrain(cfg.pretrain, cfg.data, project / "work-ddp", lambda epoch, record: relayed.append(record))
    assert Path(published.path) == project / "models" / "source-ddp" / "model.pt"
    assert relayed == read_json(project / "models" / "source-ddp" / "history.json") and len(relayed) == cfg.pretrain.epochs
    assert 0.0 <= published.metrics["source_accuracy"] <= 1.0
    assert sorted(p.name for p in (project / "work-ddp").iterdir()) == []  # no state, no workers' folder
    assert sorted(p.name for p in temp.iterdir()) == []  # nothing left behind in the temp folder either


# --- failures --------------------------------------------------------------------------------------


def failing_job(spec: dict) -> FitJob:
    """The fine-tune job, whose first forward pass fails on worker rank 1."""
    job = real_fit_job(spec)
    if os.environ.get("RANK") == "1":

        def fail(*_: object) -> None:
            raise RuntimeError("injected fault in worker 1")

        job.model.head.register_forward_pre_hook(fail)
    return job


def test_a_failing_worker_raises_its_message_and_publishes_nothing(project: Path, workers_import_tests, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.finetune as finetune_module

    monkeypatch.setattr(finetune_module, "fit_job", failing_job)
    run_dir = project / "run"
    with pytest.raises(WorkerFailed, match="rank 1 failed: RuntimeError: injected fault in worker 1"):
        _finetune(tiny_config("finetune.device=cpu", "finetune.devices=2", "finetune.epochs=2"), run_dir)
    assert not (run_dir / "model.pt").exists() and not (run_dir / "history.json").exists()
    assert (run_dir / "workers" / "workers.log").exists() and (run_dir / "workers" / "torchrun").is_dir()  # kept for a post-mortem


# --- configuration and sharding, without workers ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.devices=2", "finetune.methods=[adabn]"], "finetune.methods ['adabn'] train on one device only"),
        (["finetune.devices=4", "finetune.batch_size=2"], "finetune.batch_size=2 is the global batch"),
        (["finetune.devices=2", "finetune.device=cuda:1"], "finetune.devices=2 needs finetune.device auto, cuda or cpu"),
        (["pretrain.devices=2", "pretrain.device=mps"], "pretrain.devices=2 needs pretrain.device auto, cuda or cpu"),
    ],
)
def test_devices_that_cannot_work_name_the_field_and_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(*overrides)


def test_detectors_on_several_devices_need_yolo_and_cuda() -> None:
    from test_detection import detection_config

    with pytest.raises(ConfigError, match="Faster R-CNN trains on one device"):
        detection_config("fasterrcnn_mobilenet_v3_large_fpn", "finetune.devices=2")
    with pytest.raises(ConfigError, match="finetune.devices=2 with finetune.device=cpu: Ultralytics"):
        detection_config("yolov8n", "finetune.devices=2", "finetune.device=cpu")


def test_ultralytics_gets_one_gpu_index_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptflow.config import FinetuneConfig
    from adaptflow.detection.yolo.training import ultralytics_device

    assert ultralytics_device(FinetuneConfig(arch="yolov8n", device="cpu")) == "cpu"
    assert ultralytics_device(FinetuneConfig(arch="yolov8n", device="cuda:1")) == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="finetune.devices=2: Ultralytics trains on several devices with CUDA GPUs only"):
        ultralytics_device(FinetuneConfig(arch="yolov8n", devices=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert ultralytics_device(FinetuneConfig(arch="yolov8n", devices=2)) == "0,1"
    with pytest.raises(ConfigError, match="finetune.devices=8 but this machine shows 4 CUDA device"):
        ultralytics_device(FinetuneConfig(arch="yolov8n", devices=8, batch_size=64))


def test_more_workers_than_gpus_is_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    problem = devices_problem("finetune", "cuda", 2)
    assert problem is not None and "finetune.devices=2 but this machine shows 1 CUDA device" in problem[0]
    assert devices_problem("finetune", "cpu", 2) is None  # CPU workers (gloo): as many as asked
    assert devices_problem("finetune", "cuda", 1) is None


def test_a_device_this_machine_lacks_is_refused_before_training(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    from adaptflow.training import resolve_device
    from adaptflow.validate import DataValidationError, validate

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices_problem("finetune", "cuda", 1) == ("finetune.device=cuda but this machine has no CUDA device",
                                                     "set finetune.device=auto (a GPU where there is one, else the CPU) or cpu")
    assert devices_problem("pretrain", "mps", 1) == ("pretrain.device=mps but this machine has no Apple GPU", "set pretrain.device=auto or cpu")
    with pytest.raises(DataValidationError, match=r"\n  - finetune.device: finetune.device=cuda but this machine has no CUDA device; set "):
        validate(tiny_config("finetune.device=cuda"))  # the flows' first task: before any data is versioned or model fetched
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' was requested but CUDA is not available here"):
            resolve_device("cuda")  # a user error: not retried, one line
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices_problem("pretrain", "cuda:2", 1) == ("pretrain.device=cuda:2 but this machine shows 2 CUDA device(s)",
                                                       "set pretrain.device=auto (a GPU where there is one, else the CPU) or cuda:0 to "
                                                       "cuda:1 (check CUDA_VISIBLE_DEVICES)")
    assert devices_problem("pretrain", "cuda:1", 1) is None


@pytest.mark.parametrize(("n", "batch", "size"), [(40, 16, 2), (41, 16, 2), (33, 16, 2), (35, 16, 3), (7, 16, 3), (50, 16, 1)])
def test_shards_cover_each_global_batch_and_weight_it_like_one_process(n: int, batch: int, size: int) -> None:
    steps = World(0, size).steps(n, batch)
    assert steps == (-(-n // batch) if size == 1 or not 0 < n % batch < size else n // batch)  # a last batch too small joins the one before
    order = torch.randperm(n)
    seen = []
    for step in range(steps):
        start = step * batch
        rows = order[start : start + batch if step + 1 < steps else n]
        shards = [rows[World(rank, size).shard()] for rank in range(size)]
        assert all(len(s) > 0 for s in shards)
        assert sorted(torch.cat(shards).tolist()) == sorted(rows.tolist())
        # DDP averages: sum over workers of scale * shard mean = the mean over the whole batch
        values = torch.rand(n, dtype=torch.float64)
        ddp = sum(World(r, size).loss_scale(len(s), len(rows)) * values[s].mean() for r, s in enumerate(shards)) / size
        assert float(ddp) == pytest.approx(float(values[rows].mean()), rel=1e-12)
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))  # every image once per epoch


# --- GPUs --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_two_gpus_with_nccl_and_sync_batch_norm_match_one_gpu(project: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    from adaptflow.io import read_json

    base = ("finetune.device=cuda", "finetune.precision=off", "finetune.augment=true")  # lp_ft: batch norm trains, synced
    _finetune(tiny_config(*base), project / "single")
    _finetune(tiny_config(*base, "finetune.devices=2"), project / "ddp")
    single, ddp = read_json(project / "single" / "history.json"), read_json(project / "ddp" / "history.json")
    # cuDNN picks its own kernels per batch shape: looser than the CPU bound
    assert [h["train_loss"] for h in ddp] == pytest.approx([h["train_loss"] for h in single], rel=1e-2)
