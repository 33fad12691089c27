"""Adaptation methods against their definitions, and each one running inside the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from adaptflow.adapt import METHODS, VALIDATORS, Adaptation, AdaptBatch, AdaptOptions, TargetData, build_methods
from adaptflow.adapt.adabn import adapt_batch_norm
from adaptflow.adapt.coral import coral_loss
from adaptflow.adapt.dann import dann_lambda, reverse_gradient
from adaptflow.adapt.mcc import mcc_loss
from adaptflow.adapt.self_training import select_pseudo_labels
from adaptflow.adapt.selection import TargetPredictions, information_maximization, mixed_probe_consistency, mixed_probes, neg_entropy
from adaptflow.config import AdaptMethod
from adaptflow.data import ImageSet
from adaptflow.models import build_classifier
from adaptflow.training import Normalizer, TrainSettings, fit, score_model
from conftest import Crash, crash_at


def _images(n: int = 32, classes: int = 4, seed: int = 0, shift: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, 3, 16, 16), generator=g, dtype=torch.uint8) + shift
    for c in range(classes):
        images[labels == c, :, 4 * c : 4 * c + 4, 4 * c : 4 * c + 4] = 250
    return ImageSet(images, labels, tuple(map(str, range(classes))))


def test_config_lists_exactly_the_registered_methods() -> None:
    assert set(AdaptMethod.__args__) == set(METHODS)


def test_gradient_reversal_flips_the_sign_and_scales() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    weights = torch.randn(5, 3)
    (reverse_gradient(x, 0.3) * weights).sum().backward()
    assert torch.allclose(x.grad, -0.3 * weights)
    assert torch.equal(reverse_gradient(x, 0.3), x)  # identity forward
    assert dann_lambda(0.0) == 0.0 and dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)


def test_coral_loss_equals_its_formula() -> None:
    source = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    # Hand-computed unbiased covariances: C_s = [[7/3, 1/2], [1/2, 1]], C_t = [[1, 1/2], [1/2, 1]]
    expected = ((7 / 3 - 1) ** 2) / (4 * 2 * 2)
    assert coral_loss(source, target).item() == pytest.approx(expected)
    assert coral_loss(source, source).item() == pytest.approx(0.0, abs=1e-7)


def test_mcc_is_zero_for_confident_one_hot_and_higher_for_confusion() -> None:
    confident = torch.eye(4).repeat(2, 1) * 100
    confused = torch.zeros(8, 4)
    assert mcc_loss(confident).item() == pytest.approx(0.0, abs=1e-6)
    assert mcc_loss(confused).item() == pytest.approx(3 / 4)  # uniform rows: off-diagonal mass 3/4 per row


def test_adabn_changes_only_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = TargetData(_images(shift=80).images, Normalizer(torch.device("cpu")))
    adapt_batch_norm(model, target)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    bn = model.backbone[0][1]
    assert bn.momentum == 0.1 and not model.training  # restored
    x = target.normalize(target.images)
    first = model.backbone[0][0](x)
    assert torch.allclose(bn.running_mean, first.mean((0, 2, 3)), atol=1e-4)  # exact target statistics


def test_pseudo_labels_respect_the_threshold_and_balance_classes() -> None:
    probs = torch.tensor([
        [0.95, 0.05, 0.0], [0.97, 0.03, 0.0], [0.99, 0.01, 0.0], [0.92, 0.08, 0.0],  # four confident 0s
        [0.05, 0.93, 0.02], [0.1, 0.5, 0.4],                                        # one confident 1
        [0.0, 0.04, 0.96], [0.0, 0.09, 0.91],                                        # two confident 2s
    ])
    labels, keep = select_pseudo_labels(probs, threshold=0.9, balanced=False)
    assert keep.tolist() == [True, True, True, True, True, False, True, True]
    labels, keep = select_pseudo_labels(probs, threshold=0.9)
    assert (probs.max(1).values[keep] >= 0.9).all()
    assert torch.bincount(labels[keep], minlength=3).tolist() == [2, 1, 2]  # capped at the median count, 2
    assert keep[[1, 2]].all() and not keep[[0, 3]].any()  # the most confident 0s are kept


def test_validators_prefer_confident_diverse_predictions() -> None:
    diverse = torch.eye(4).repeat(3, 1) * 10
    collapsed = torch.zeros(12, 4)
    collapsed[:, 0] = 10
    uniform = torch.zeros(12, 4)
    assert information_maximization(diverse) > information_maximization(collapsed)
    assert information_maximization(diverse) > information_maximization(uniform)
    assert neg_entropy(diverse) > neg_entropy(uniform)
    assert set(VALIDATORS) >= {"information_maximization", "entropy", "snd", "mixval"}


def test_mixval_averages_probes_within_and_across_predicted_classes() -> None:
    one_hot = torch.eye(2) * 5
    pseudo = torch.tensor([0, 0, 1, 1, 1])
    partner = torch.tensor([1, 2, 3, 4, 0])  # within a class: 0-1, 2-3, 3-4; across: 1-2, 4-0
    kept = torch.tensor([1, 0, 1, 1, 1])  # probe 1 (across) flips to its smaller part's class
    probe = torch.where(kept.bool(), pseudo, 1 - pseudo)
    score = mixed_probe_consistency(TargetPredictions(one_hot[pseudo], one_hot[probe], partner))
    assert float(score) == pytest.approx((3 / 3 + 1 / 2) / 2)
    collapsed = TargetPredictions(one_hot[torch.zeros(5, dtype=torch.long)], one_hot[torch.zeros(5, dtype=torch.long)], partner)
    assert float(mixed_probe_consistency(collapsed)) == 0.5  # no probe across classes: that half scores 0


class Brightness(torch.nn.Module):
    """Class 1 when an image's mean (normalised) brightness is above `threshold`; confidence grows with `scale`."""

    def __init__(self, threshold: float, scale: float = 1.0) -> None:
        super().__init__()
        self.threshold, self.scale = threshold, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.scale * (x.mean((1, 2, 3)) - self.threshold)
        return torch.stack([-margin, margin], 1)


def test_mixval_scores_where_the_boundary_lies_not_how_confident_the_model_is() -> None:
    images = torch.cat([torch.full((20, 3, 4, 4), 10), torch.full((20, 3, 4, 4), 245)]).to(torch.uint8)
    probes, partner = mixed_probes(images)
    assert torch.equal(probes, mixed_probes(images, chunk=7)[0]) and torch.equal(partner, mixed_probes(images)[1])
    assert int(probes[0, 0, 0, 0]) == round(0.55 * int(images[0, 0, 0, 0]) + 0.45 * int(images[partner[0], 0, 0, 0]))
    centred, near_dark = Brightness(0.23), Brightness(-1.0, scale=100.0)  # both separate the groups (means -1.81 and 2.27)
    assert score_model(centred, images)["mixval"] == 1.0
    assert score_model(near_dark, images)["mixval"] < 0.8  # probes led by a dark image cross its boundary
    assert score_model(near_dark, images)["entropy"] > score_model(centred, images)["entropy"]  # yet it is more confident


@pytest.mark.parametrize("names", [[name] for name in sorted(METHODS)] + [["adabn", "self_training"]])
def test_each_method_trains_a_step_on_cpu(names: list[str]) -> None:
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=1, batch_size=16, lr=1e-3, device="cpu", strategy="finetune", methods=names,
                           augment=True, pseudo_label_threshold=0.0)
    history = fit(model, _images(), settings, unlabeled=_images(24, shift=40, seed=1), progress=False)
    assert math.isfinite(history[0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    if "self_training" in names:
        assert history[0]["pseudo_label_fraction"] > 0 and 0 <= history[0]["pseudo_label_accuracy"] <= 1


@pytest.mark.parametrize(("target_batch_size", "seen"), [(0, 10), (24, 24)])
def test_the_unlabeled_batch_is_as_large_as_asked(monkeypatch, target_batch_size: int, seen: int) -> None:
    """A few labeled images make a small labeled batch; `target_batch_size` sets the unlabeled one apart from it."""
    sizes: list[int] = []
    loss = Adaptation.loss

    def recording(self, model, x, y, x_target, index, progress):
        sizes.append(len(x_target))
        return loss(self, model, x, y, x_target, index, progress)

    monkeypatch.setattr(Adaptation, "loss", recording)
    settings = TrainSettings(epochs=3, batch_size=16, lr=1e-3, device="cpu", methods=["mcc"], target_batch_size=target_batch_size)
    fit(build_classifier("small_cnn", 4), _images(10), settings, unlabeled=_images(40, shift=40, seed=1), progress=False)
    assert sizes == [seen] * 3


def test_method_loss_terms_have_gradients() -> None:
    torch.manual_seed(0)
    options = AdaptOptions(weight=1.0, pseudo_label_threshold=0.0, num_classes=4)
    model = build_classifier("small_cnn", 4)
    target = TargetData(_images(8).images, Normalizer(torch.device("cpu")))
    for method in build_methods(["dann", "coral", "mcc", "self_training"], options):
        method.setup(model, target)
        method.before_epoch(model, target, 0)
        d = model.head.in_features
        fs = torch.randn(8, d, requires_grad=True)
        ft = torch.randn(8, d, requires_grad=True)
        batch = AdaptBatch(fs, model.head(fs), torch.arange(8) % 4, ft, model.head(ft), torch.arange(8), 0.5)
        method.loss(batch).backward()
        assert ft.grad is not None and ft.grad.abs().sum() > 0, method.name


def test_methods_without_unlabeled_images_fail_with_the_fix() -> None:
    settings = TrainSettings(epochs=1, batch_size=16, lr=1e-3, device="cpu", methods=["coral"])
    with pytest.raises(ValueError, match="unlabeled split"):
        fit(build_classifier("small_cnn", 4), _images(), settings, progress=False)
    with pytest.raises(ValueError, match="unknown adaptation method"):
        build_methods(["coral", "magic"], AdaptOptions())


def test_resume_restores_the_methods_state(tmp_path) -> None:
    settings = TrainSettings(epochs=2, batch_size=16, lr=1e-3, device="cpu", strategy="finetune", methods=["dann", "self_training"],
                           pseudo_label_threshold=0.0)
    torch.manual_seed(0)
    straight = build_classifier("small_cnn", 4)
    fit(straight, _images(), settings, unlabeled=_images(24, shift=40), progress=False)

    state = tmp_path / "state.pt"
    torch.manual_seed(0)
    with pytest.raises(Crash):
        fit(build_classifier("small_cnn", 4), _images(), settings, unlabeled=_images(24, shift=40), state_path=state,
            fingerprint="f", on_epoch=crash_at(1), progress=False)
    resumed = build_classifier("small_cnn", 4)
    fit(resumed, _images(), settings, unlabeled=_images(24, shift=40), state_path=state, fingerprint="f", progress=False)
    assert all(torch.allclose(straight.state_dict()[k].float(), resumed.state_dict()[k].float()) for k in straight.state_dict())


def test_finetune_adapts_from_source_labels_and_unlabeled_target(project) -> None:
    from conftest import tiny_config

    from adaptflow.finetune import finetune, training_sets
    from adaptflow.models import load_checkpoint
    from adaptflow.weights import fetch_pretrained

    cfg = tiny_config("finetune.methods=[adabn, self_training]", "data.labeled_per_class=0", "finetune.strategy=finetune",
                      "finetune.pseudo_label_threshold=0.5", "finetune.epochs=1")
    train, unlabeled = training_sets(cfg.finetune, cfg.data)
    assert len(train) == 160 and len(unlabeled) == 160  # source train only (k = 0), and the unlabeled target split
    model = finetune(cfg.finetune, cfg.data, fetch_pretrained(cfg.pretrained.uri), project / "run")
    _, meta = load_checkpoint(model.path)
    assert meta["extra"]["methods"] == ["adabn", "self_training"]
    with pytest.raises(ValueError, match="labeled_per_class=0 leaves no labeled target images"):
        training_sets(tiny_config("data.labeled_per_class=0").finetune, tiny_config("data.labeled_per_class=0").data)


def test_finetune_keeps_the_epoch_best_on_the_validation_set_or_by_a_validator(project) -> None:
    from conftest import tiny_config

    from adaptflow.config import EvaluateConfig
    from adaptflow.data import load_split
    from adaptflow.evaluate import measure
    from adaptflow.finetune import finetune
    from adaptflow.io import read_json
    from adaptflow.models import load_checkpoint
    from adaptflow.weights import fetch_pretrained

    pretrained = fetch_pretrained(tiny_config().pretrained.uri)
    cfg = tiny_config("data.val_fraction=0.25", "finetune.keep_epoch=target_val_accuracy", "finetune.strategy=finetune")
    model = finetune(cfg.finetune, cfg.data, pretrained, project / "val")
    history = read_json(project / "val" / "history.json")
    assert len(history) == 3 and all(0 <= h["target_val_accuracy"] <= 1 and h["target_val_loss"] > 0 for h in history)
    kept = measure(EvaluateConfig(batch_size=7), cfg.data, model.path)  # another batch size than the epochs' scoring
    assert kept["target_val_accuracy"] == pytest.approx(max(h["target_val_accuracy"] for h in history))

    cfg = tiny_config("finetune.keep_epoch=information_maximization", "finetune.strategy=finetune")
    model = finetune(cfg.finetune, cfg.data, pretrained, project / "im")
    history = read_json(project / "im" / "history.json")
    assert all({"information_maximization", "entropy", "snd", "mixval"} <= set(h) for h in history) and "target_val_accuracy" not in history[0]
    weights, meta = load_checkpoint(model.path)
    unlabeled = load_split(cfg.data, cfg.data.target, "unlabeled", meta["classes"])
    assert score_model(weights, unlabeled.images)["information_maximization"] == pytest.approx(
        max(h["information_maximization"] for h in history), abs=1e-5)

    with pytest.raises(ValueError, match=r"finetune.keep_epoch target_val_accuracy needs the target's validation set: set data.val_fraction"):
        no_val = tiny_config("finetune.keep_epoch=target_val_accuracy")
        finetune(no_val.finetune, no_val.data, pretrained, project / "none")
