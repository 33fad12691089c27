"""The training loop: strategies train what they should, runs are seeded, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptflow.data import ImageSet
from adaptflow.models import build_classifier, load_checkpoint, load_source_model, save_checkpoint
from adaptflow.training import (
    Normalizer, Phase, TrainSettings, affine_draws, fit, plan_phases, predict, random_affine, random_low_resolution, train_step,
)
from conftest import Crash, crash_at


SMALL = "mobilenet_v3_small"  # fast enough to train several times per test


def _images(n: int = 48, classes: int = 4, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    for c in range(classes):  # a learnable signal: a bright square whose place is the class
        images[labels == c, :, 4 * c : 4 * c + 4, 4 * c : 4 * c + 4] = 250
    return ImageSet(images, labels, tuple(map(str, range(classes))))


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 2, "batch_size": 16, "lr": 1e-3, "device": "cpu", **kw})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_train_step_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4)
    data = _images()
    x = data.images.float() / 255
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first, _ = train_step(model, x, data.labels, opt, None, None)
    for _ in range(15):
        last, logits = train_step(model, x, data.labels, opt, None, None)
    assert last < first * 0.5
    assert logits.shape == (48, 4) and not logits.requires_grad


def test_linear_probe_changes_only_the_head() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4)
    before = _snapshot(model)
    fit(model, _images(), _settings(strategy="linear_probe"), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}  # batch-norm statistics of the frozen backbone too


def test_finetune_gives_the_backbone_a_lower_learning_rate() -> None:
    from adaptflow.training import param_groups

    model = build_classifier("mobilenet_v3_small", 3)
    groups = param_groups(model, lr=1e-2, backbone_lr_scale=0.1, phase=Phase(1, train_backbone=True))
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-3])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_lp_ft_plans_a_probe_then_full_training() -> None:
    phases = plan_phases("lp_ft", 5, 2)
    assert [(p.epochs, p.train_backbone) for p in phases] == [(2, False), (3, True)]
    with pytest.raises(ValueError, match="lp_epochs"):
        plan_phases("lp_ft", 2, 2)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_architectures_get_a_head_sized_to_the_classes(arch: str) -> None:
    model = build_classifier(arch, 7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_same_seed_same_weights() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier("resnet18", 4)
        fit(model, _images(), _settings(augment=True, seed=3), progress=False)
        runs.append(_snapshot(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_model_predict_prepared_trains_afterwards_and_both_run_channels_last() -> None:
    """predict moves a fresh model to its device and layout; parameters converted inside inference mode
    would be inference tensors that `fit` cannot train (what a CPU model evaluated on a GPU first hits)."""
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4)
    assert model.backbone[0][0].weight.is_contiguous()  # as built: NCHW
    before = predict(model, _images().images)
    weight = model.backbone[0][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert not any(p.is_inference() for p in model.parameters())
    history = fit(model, _images(), _settings(epochs=1), progress=False)
    assert history[0]["train_loss"] > 0 and not torch.equal(predict(model, _images().images), before)


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    settings = _settings(epochs=4, strategy="lp_ft", lp_epochs=1, augment=True)
    torch.manual_seed(0)
    straight = build_classifier(SMALL, 4)
    expected_history = fit(straight, _images(), settings, progress=False)

    state = tmp_path / "train_state.pt"
    torch.manual_seed(0)
    with pytest.raises(Crash):
        fit(build_classifier(SMALL, 4), _images(), settings, state_path=state, fingerprint="f", on_epoch=crash_at(2), progress=False)
    torch.manual_seed(123)  # a new process: different global RNG, different initial weights
    resumed = build_classifier(SMALL, 4)
    history = fit(resumed, _images(), settings, state_path=state, fingerprint="f", progress=False)
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected_history], abs=0)
    assert all(torch.equal(straight.state_dict()[k], resumed.state_dict()[k]) for k in straight.state_dict())


def test_state_of_another_config_is_not_resumed(tmp_path: Path) -> None:
    state = tmp_path / "train_state.pt"
    fit(build_classifier(SMALL, 4), _images(), _settings(epochs=1), state_path=state, fingerprint="a", progress=False)
    history = fit(build_classifier(SMALL, 4), _images(), _settings(epochs=1), state_path=state, fingerprint="b", progress=False)
    assert len(history) == 1  # trained afresh instead of returning a finished run


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet18", classes=("a", "b", "c", "d"), image_size=16)
    loaded, meta = load_checkpoint(path)
    images = _images().images
    assert torch.equal(predict(model, images, device="cpu"), predict(loaded, images, device="cpu"))
    assert meta["classes"] == ("a", "b", "c", "d") and meta["image_size"] == 16
    torch.load(path, weights_only=True)  # loads without unpickling code


def test_torchvision_state_dict_loads_into_the_backbone(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18-00000000.pth"
    torch.save(net.state_dict(), path)
    model, meta = load_source_model(path, "resnet18")
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight) and meta["classes"] == ()
    with pytest.raises(ValueError, match="do not fit mobilenet_v3_small"):
        load_source_model(path, "mobilenet_v3_small")


def test_random_affine_keeps_shape_and_moves_pixels() -> None:
    x = _images().images.float() / 255
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_low_resolution_shows_the_drawn_share_of_images_at_a_lower_side_and_leaves_the_rest_alone() -> None:
    import torch.nn.functional as F

    board = ((torch.arange(32).view(1, -1) + torch.arange(32).view(-1, 1)) % 2).float().expand(3, 32, 32)  # 1-pixel detail
    x = torch.stack([board, board * 0.3 + 0.5, board.flip(1)] * 4)
    draws = torch.rand(len(x), 2, generator=torch.Generator().manual_seed(0))
    draws[:, 1] = torch.linspace(0, 0.6, len(x))  # sides from 8 px to about 16 px of 32
    out = random_low_resolution(x, 0.5, draws)
    kept, lowered = draws[:, 0] >= 0.5, draws[:, 0] < 0.5
    assert kept.any() and lowered.any()
    assert torch.equal(out[kept], x[kept])
    assert (out[lowered].std((1, 2, 3)) < 0.3 * x[lowered].std((1, 2, 3))).all(), "detail finer than the lower side is gone"
    first = int(lowered.nonzero()[0])
    assert draws[first, 1] < 1 / 8  # drawn the lowest side, a quarter of 32
    expected = F.interpolate(F.interpolate(x[first : first + 1], size=(8, 8), mode="bilinear", antialias=True), size=(32, 32), mode="bilinear")
    assert torch.allclose(out[first], expected[0])
    assert torch.equal(random_low_resolution(x, 0.0, draws), x)


def test_augmentation_without_low_resolution_draws_and_augments_as_the_affine_alone() -> None:
    """Runs trained before low_resolution existed are reproduced: the same random numbers, the same batches."""
    images = _images().images
    plain = Normalizer(torch.device("cpu"))
    assert torch.equal(plain.draws(5, torch.Generator().manual_seed(3)), affine_draws(5, torch.Generator().manual_seed(3)))
    before = (random_affine(images.float() / 255, torch.Generator().manual_seed(3)) - plain.mean) / plain.std  # the old path
    assert torch.equal(plain(images, torch.Generator().manual_seed(3)), before)
    lowered = Normalizer(torch.device("cpu"), low_resolution=1.0)
    assert lowered.draws(5, torch.Generator()).shape == (5, 6)
    lowered_batch = lowered(images, torch.Generator().manual_seed(3))
    assert lowered_batch.shape == images.shape and not torch.allclose(lowered_batch, plain(images, torch.Generator().manual_seed(3)))
    model = build_classifier(SMALL, 4)
    history = fit(model, _images(), _settings(epochs=1, augment=True, low_resolution=0.5), progress=False)
    assert len(history) == 1 and history[0]["train_loss"] > 0


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.training.loop as train_module

    settings = _settings(epochs=3, augment=True, checkpoint_every_steps=1)
    torch.manual_seed(0)
    straight = build_classifier(SMALL, 4)
    fit(straight, _images(), settings, progress=False)

    real_step, calls = train_module.train_step, {"n": 0}

    def dies_on_the_fifth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2 of 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    state = tmp_path / "train_state.pt"
    monkeypatch.setattr(train_module, "train_step", dies_on_the_fifth_step)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(build_classifier(SMALL, 4), _images(), settings, state_path=state, fingerprint="f", progress=False)
    assert (tmp_path / "train_state.json").read_text().count('"step": 1') == 1
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = build_classifier(SMALL, 4)
    fit(resumed, _images(), settings, state_path=state, fingerprint="f", progress=False)
    assert all(torch.equal(straight.state_dict()[k], resumed.state_dict()[k]) for k in straight.state_dict())


def test_gradual_unfreezing_opens_one_block_at_a_time_from_the_top() -> None:
    phases = plan_phases("gradual_unfreeze", 5, num_blocks=3, unfreeze_epochs=1)
    assert [(p.epochs, p.train_backbone, p.blocks) for p in phases] == [(1, False, None), (1, True, 1), (1, True, 2), (2, True, None)]
    from adaptflow.training import backbone_blocks

    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4)
    blocks = backbone_blocks(model.backbone)
    before = [[p.detach().clone() for p in block.parameters()] for block in blocks]
    fit(model, _images(), _settings(strategy="gradual_unfreeze", epochs=2, unfreeze_epochs=1), progress=False)
    changed = [any(not torch.equal(a, p) for a, p in zip(old, block.parameters(), strict=True)) for old, block in zip(before, blocks, strict=True)]
    assert changed == [False] * (len(blocks) - 1) + [True]  # two epochs: the head, then the top block only


def test_surgical_trains_the_head_and_the_first_blocks_and_keeps_the_rest_with_source_statistics() -> None:
    from adaptflow.training import backbone_blocks

    phases = plan_phases("surgical", 4, num_blocks=5, surgical_blocks=2)
    assert [(p.epochs, p.train_backbone, p.blocks, p.from_input) for p in phases] == [(4, True, 2, True)]
    with pytest.raises(ValueError, match="finetune.surgical_blocks backbone blocks, but this backbone has 5 .got 6.: set it between 1 and 5"):
        plan_phases("surgical", 4, num_blocks=5, surgical_blocks=6)

    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4)
    blocks = backbone_blocks(model.backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, _images(), _settings(strategy="surgical", epochs=2, surgical_blocks=1), progress=False)
    changed = {k.split(".")[1] for k, v in model.state_dict().items() if k.startswith("backbone.") and not torch.equal(before[k], v)}
    first = {name for name, child in model.backbone.named_children() if child is blocks[0]}
    assert changed == first  # weights and batch-norm statistics of the first block only
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])


def test_discriminative_rates_decay_from_the_top_block_down() -> None:
    from adaptflow.training import backbone_blocks, param_groups

    model = build_classifier("small_cnn", 3)
    groups = param_groups(model, lr=1e-2, backbone_lr_scale=1.0, phase=Phase(1, train_backbone=True), layer_decay=0.5)
    n = len(backbone_blocks(model.backbone))
    assert n >= 3
    assert [g["lr"] for g in groups] == pytest.approx([1e-2] + [1e-2 * 0.5**depth for depth in range(n)])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_rows_on_the_cpu_are_indexed_in_place_and_sliced_in_order() -> None:
    from adaptflow.data.feed import DeviceRows

    images = torch.arange(10 * 3 * 2 * 2, dtype=torch.uint8).view(10, 3, 2, 2)
    labels = torch.arange(10) % 3
    rows = DeviceRows([images, labels], torch.device("cpu"))
    assert rows.resident and len(rows) == 10 and rows.index_device.type == "cpu"
    index = torch.tensor([7, 0, 7, 3])
    taken_images, taken_labels = rows.take(index)
    assert torch.equal(taken_images, images[index]) and torch.equal(taken_labels, labels[index])
    batches = list(rows.slices(4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), images) and torch.equal(torch.cat([b[1] for b in batches]), labels)


def test_keep_epoch_ends_with_the_best_scored_epoch_and_a_resume_keeps_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier(SMALL, 4)
    start = _snapshot(model)

    def closeness(m: torch.nn.Module, device: torch.device) -> dict[str, float]:  # higher the nearer the weights stay to the start
        moved = sum((v.detach().cpu() - start[k]).norm().item() for k, v in m.state_dict().items() if v.is_floating_point())
        return {"closeness": -moved}

    settings = _settings(epochs=3, keep_epoch="closeness")
    after: dict[int, dict[str, torch.Tensor]] = {}
    history = fit(model, _images(), settings, on_epoch=lambda epoch, record: after.update({epoch: _snapshot(model)}),
                  progress=False, score=closeness)
    scores = [h["closeness"] for h in history]
    assert len(scores) == 3 and scores[0] == max(scores) and scores[0] > scores[2]
    assert all(torch.equal(model.state_dict()[k], after[1][k]) for k in after[1])
    assert not all(torch.equal(after[1][k], after[3][k]) for k in after[3])

    state = tmp_path / "train_state.pt"
    torch.manual_seed(0)
    with pytest.raises(Crash):
        fit(build_classifier(SMALL, 4), _images(), settings, state_path=state, fingerprint="f", on_epoch=crash_at(2), progress=False,
            score=closeness)
    torch.manual_seed(123)  # other initial weights: the kept epoch comes from the saved state
    resumed = build_classifier(SMALL, 4)
    fit(resumed, _images(), settings, state_path=state, fingerprint="f", progress=False, score=closeness)
    assert all(torch.equal(resumed.state_dict()[k], after[1][k]) for k in after[1])

    with pytest.raises(ValueError, match="keep_epoch closeness needs the model scored after every epoch"):
        fit(build_classifier(SMALL, 4), _images(), settings, progress=False)
    with pytest.raises(ValueError, match=r"keep_epoch closeness is not among the epoch's scores \['other'\]"):
        fit(build_classifier(SMALL, 4), _images(), settings, progress=False, score=lambda m, d: {"other": 0.0})


def test_l2sp_adds_its_weight_times_the_distance_from_the_start_to_the_gradients_of_what_trains() -> None:
    from adaptflow.training import Anchor

    torch.manual_seed(0)
    model = build_classifier(SMALL, 4)
    anchor = Anchor(model, weight=0.3)
    start = _snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    for p in model.backbone.parameters():
        p.requires_grad_(False)  # a linear probe: only the head is pulled
    penalty = anchor.penalty()
    head = dict(model.head.named_parameters())
    expected = 0.5 * 0.3 * sum(float(((p.detach() - start[f"head.{k}"]) ** 2).sum()) for k, p in head.items())
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5) and expected > 0
    penalty.backward()
    for k, p in head.items():
        assert torch.allclose(p.grad, 0.3 * (p.detach() - start[f"head.{k}"]), atol=1e-7)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_l2sp_keeps_a_few_label_fit_closer_to_its_start_and_resumes_from_the_start_it_saved(tmp_path: Path) -> None:
    def distance(model: torch.nn.Module, start: dict[str, torch.Tensor]) -> float:
        return sum(float(((p.detach() - start[k]) ** 2).sum()) for k, p in model.named_parameters())

    torch.manual_seed(0)
    source = build_classifier(SMALL, 4)
    start = _snapshot(source)
    few = _images(n=8)
    moved = {}
    for weight in (0.0, 10.0):
        model = build_classifier(SMALL, 4)
        model.load_state_dict(start)
        fit(model, few, _settings(epochs=4, l2sp=weight), progress=False)
        moved[weight] = distance(model, start)
    assert 0 < moved[10.0] < 0.5 * moved[0.0]

    settings = _settings(epochs=4, l2sp=10.0)
    state = tmp_path / "train_state.pt"
    crashed = build_classifier(SMALL, 4)
    crashed.load_state_dict(start)
    with pytest.raises(Crash):
        fit(crashed, few, settings, state_path=state, fingerprint="f", on_epoch=crash_at(2), progress=False)
    torch.manual_seed(123)
    resumed = build_classifier(SMALL, 4)  # other weights: the pull must still be toward the run's start
    fit(resumed, few, settings, state_path=state, fingerprint="f", progress=False)
    assert distance(resumed, start) == pytest.approx(moved[10.0], rel=1e-6)


@pytest.mark.slow  # TorchInductor compiles C++ for the CPU: about a minute per phase on 2 cores
def test_compiled_loop_trains_like_the_eager_one() -> None:
    """compile=true on a CPU: the same loss and weights as the eager loop, to float tolerance (a compiled
    graph may fuse and reorder float operations; SGD, because AdamW's normalised step turns the tiny
    differences of near-zero gradients into differences of a whole learning rate)."""
    histories, weights = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = build_classifier("small_cnn", 4)
        histories.append(fit(model, _images(32), _settings(epochs=1, strategy="finetune", optimizer="sgd", compile=compile_), progress=False))
        weights.append(_snapshot(model))
    assert histories[1][0]["train_loss"] == pytest.approx(histories[0][0]["train_loss"], rel=1e-4)
    assert all(torch.allclose(weights[0][k].float(), weights[1][k].float(), atol=1e-5) for k in weights[0])


def test_compile_is_refused_where_the_loop_does_not_run_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptflow.config import ConfigError, load_config
    from adaptflow.training import compiled

    with pytest.raises(ConfigError, match=r"finetune.compile=true .* finetune.methods run the model in their own losses: set finetune.compile=false"):
        load_config(None, ["finetune.compile=true", "finetune.methods=[adabn]"])
    with pytest.raises(ConfigError, match=r"pretrain.compile=true .* detectors train in their own loops"):
        load_config("configs/detection.yaml", ["pretrain.compile=true"])
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ConfigError, match=r"no C\+\+ compiler was found .* or set compile=false"):
        compiled(build_classifier("small_cnn", 4), torch.device("cpu"))
