"""TrainConfig / load_config: the example configs load, and every error names file, line and key."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from prunekit.pipeline.config import ConfigError, TrainConfig, check_data_spec, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name,model,graph", [("sbu_attention_gcn.yaml", "attention_gcn", "sbu"),
                                              ("fpha_stgcn.yaml", "stgcn", "fpha")])
def test_example_configs_load(name, model, graph):
    cfg = load_config(CONFIGS / name)
    assert cfg.model == model and cfg.model_kwargs == {"graph": graph}
    assert cfg.data["format"] == graph
    assert cfg.optimizer == "sgd" and isinstance(cfg.lr, float) and cfg.epochs > 0


def test_every_example_config_is_valid():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        load_config(f)


def test_defaults_and_int_for_float(tmp_path):
    cfg = load_config(_write(tmp_path, "model: stgcn\nlr: 1\n"))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.schedule == "cosine" and cfg.milestones == [] and cfg.out_dir is None
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = _write(tmp_path, "model: stgcn\nepochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{p}:3: unknown key 'learning_rate'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"exp\.yaml:2: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(_write(tmp_path, "model: stgcn\nepoch: 3\n"))


@pytest.mark.parametrize("line,key,msg", [
    ("epochs: ten", "epochs", "must be an integer, got str 'ten'"),
    ("epochs: true", "epochs", "must be an integer, got bool True"),
    ("lr: fast", "lr", "must be a number"),
    ("model_kwargs: [sbu]", "model_kwargs", "must be a mapping"),
    ("data: sbu", "data", "must be a mapping"),
    ("milestones: [10, x]", "milestones", "must be a list of integers"),
    ("out_dir: 3", "out_dir", "must be a string or null"),
    ("optimizer: rmsprop", "optimizer", "must be one of sgd, adam, adamw, got 'rmsprop'"),
    ("schedule: linear", "schedule", "must be one of cosine, step, constant"),
    ("lr: -0.1", "lr", "must be > 0"),
    ("batch_size: 0", "batch_size", "must be >= 1"),
    ("warmup_epochs: 20", "warmup_epochs", "must be smaller than epochs"),
    ("milestones: [30, 10]", "milestones", "must be increasing"),
    ("device: gpu", "device", "must be 'cpu'"),
])
def test_bad_values_name_the_key_and_line(tmp_path, line, key, msg):
    p = _write(tmp_path, f"model: stgcn\nseed: 1\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    text = str(e.value)
    assert text.startswith(f"{p}:3: key '{key}' "), text
    assert msg in text, text


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.yaml: missing required key 'model'"):
        load_config(_write(tmp_path, "epochs: 3\n"))


def test_duplicate_key(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.yaml:3: duplicate key 'lr' \(first on line 2\)"):
        load_config(_write(tmp_path, "model: stgcn\nlr: 0.1\nlr: 0.2\n"))


def test_invalid_yaml_and_wrong_top_level(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.yaml:2: invalid YAML"):
        load_config(_write(tmp_path, "model: stgcn\nlr: : 0.1\nseed: 1\n"))
    with pytest.raises(ConfigError, match=r"exp\.yaml: the top level must be a mapping"):
        load_config(_write(tmp_path, "- model\n- stgcn\n"))
    with pytest.raises(ConfigError, match=r"exp\.yaml: the file is empty"):
        load_config(_write(tmp_path, "# nothing\n"))
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match=r"TrainConfig: key 'optimizer' must be one of"):
        TrainConfig(model="stgcn", optimizer="lbfgs")
    with pytest.raises(ConfigError, match=r"TrainConfig: key 'epochs' must be an integer"):
        TrainConfig(model="stgcn", epochs=2.5)


def test_fit_kwargs_match_fit_signature():
    from prunekit.pipeline.train import fit

    kwargs = TrainConfig(model="stgcn", schedule="step", milestones=[2]).fit_kwargs()
    inspect.signature(fit).bind(object(), object(), None, **kwargs)  # raises on an unknown name


def test_build_model_uses_the_registry_lazily(monkeypatch):
    import prunekit.models

    seen = {}

    def create(name, **kwargs):
        seen.update(name=name, kwargs=kwargs)
        return "model"

    monkeypatch.setattr(prunekit.models, "create", create, raising=False)
    cfg = load_config(CONFIGS / "fpha_stgcn.yaml")
    assert cfg.build_model() == "model"
    assert seen == {"name": "stgcn", "kwargs": {"graph": "fpha"}}


def test_config_train_checkpoint_do_not_import_models_at_module_level():
    import prunekit.pipeline.checkpoint
    import prunekit.pipeline.config
    import prunekit.pipeline.train

    for mod in (prunekit.pipeline.config, prunekit.pipeline.train, prunekit.pipeline.checkpoint):
        tree = ast.parse(Path(mod.__file__).read_text())
        for node in tree.body:  # module-level statements only; imports inside functions are fine
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("models" in n.split(".") for n in names), (mod.__name__, names)


# --------------------------------------------------------------------------- issue 15: NaN/inf, nested keys


@pytest.mark.parametrize("key", ["lr", "momentum", "weight_decay", "gamma"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_nan_and_inf_are_rejected(tmp_path, key, value):
    p = _write(tmp_path, f"model: stgcn\nseed: 1\n{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: key '{key}' must be a finite number \(not NaN or infinite\)"):
        load_config(p)


def test_nan_inside_model_kwargs_and_data_is_rejected(tmp_path):
    p = _write(tmp_path, "model: stgcn\nmodel_kwargs:\n  graph: sbu\n  dropout: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{p}:4: key 'model_kwargs.dropout' must be a finite number"):
        load_config(p)
    p = _write(tmp_path, "model: stgcn\ndata: {format: synthetic-sbu, difficulty: .inf}\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: key 'data.difficulty' must be a finite number"):
        load_config(p)
    with pytest.raises(ConfigError, match="TrainConfig: key 'lr' must be a finite number"):
        TrainConfig(model="stgcn", lr=float("nan"))


@pytest.mark.parametrize("text, line, words", [
    ("data:\n  format: sbu\n  root: x\n  folds: 2\n", 5, "unknown key 'data.folds' (did you mean 'fold'?)"),
    ("data: {format: cifar10, root: x, fold: 1}\n", 2, "unknown key 'data.fold'; known keys for format 'cifar10'"),
    ("data: {format: digits, root: x}\n", 2, "unknown key 'data.root'"),
    ("data: {format: sbu}\n", 2, "format 'sbu' needs 'data.root'"),
    ("data: {format: idx}\n", 2, "format 'idx' needs 'data.root'"),
    ("data: {root: x}\n", 2, "key 'data' needs a 'format'"),
    ("data: {format: ntu, root: x}\n", 2, "key 'data.format' must be one of sbu, fpha"),
    ("data:\n  format: sbu\n  root: x\n  fold: 6\n", 5, "key 'data.fold' must be an integer 1..5"),
    ("data:\n  format: synthetic-sbu\n  length: 0\n", 4, "key 'data.length' must be an integer >= 1"),
    ("data:\n  format: synthetic-sbu\n  velocity: 1\n", 4, "key 'data.velocity' must be true/false"),
    ("data:\n  format: fpha\n  root: x\n  protocol: '2:1'\n", 5, "key 'data.protocol' must be '1:1'"),
    ("data:\n  format: sbu\n  root: x\n  root: y\n", 5, "duplicate key 'data.root' (first on line 4)"),
])
def test_data_keys_checked_at_every_level_with_file_and_line(tmp_path, text, line, words):
    p = _write(tmp_path, "model: stgcn\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}:{line}: "), str(info.value)
    assert words in str(info.value), str(info.value)


def test_every_data_format_accepts_its_documented_keys(tmp_path):
    from prunekit.pipeline.config import DATA_KEYS

    for fmt, keys in DATA_KEYS.items():
        values = {"format": fmt, "root": "x", "fold": 2, "length": 16, "velocity": True, "seed": 3,
                  "difficulty": 0.5, "protocol": "1:1", "skip_known_bad": True}
        cfg = TrainConfig.from_dict({"model": "stgcn", "data": {k: values[k] for k in keys}})
        assert set(cfg.data) == keys
    assert load_config(CONFIGS / "fpha_stgcn.yaml").data["protocol"] == "1:1"


def test_config_that_is_a_folder_or_binary(tmp_path):
    (tmp_path / "c.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"c\.yaml: is a folder, not a YAML config file"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "b.yaml").write_bytes(b"model: stgcn\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"b\.yaml:2: not UTF-8 text \(byte 0xff\)"):
        load_config(tmp_path / "b.yaml")


def test_bad_model_kwargs_is_a_config_error_naming_the_line(tmp_path):
    p = _write(tmp_path, "model: mlp\nseed: 0\nmodel_kwargs: {in_channels: 1, colour: red}\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: cannot build model 'mlp' from key 'model_kwargs': .*colour"):
        load_config(p).build_model()
    p = _write(tmp_path, "model: no_such_model\n")
    with pytest.raises(ConfigError, match=rf"^{p}:1: cannot build model 'no_such_model' from key 'model'"):
        load_config(p).build_model()


def test_unavailable_device_is_a_config_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = _write(tmp_path, "model: mlp\ndevice: cuda\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: key 'device' is 'cuda' but this PyTorch sees no usable CUDA"):
        load_config(p).check_device()
    load_config(_write(tmp_path, "model: mlp\ndevice: cpu\n")).check_device()
    with pytest.raises(ConfigError, match="key 'device' must be"):
        load_config(_write(tmp_path, "model: mlp\ndevice: 'cuda:x'\n"))


# --------------------------------------------------------------------------- issue 16: split checks, optional PyYAML


@pytest.mark.parametrize("spec, message", [
    ({"format": "sbu", "root": 3}, "data: key 'data.root' must be a string (a folder), got 3"),
    ({"format": "sbu", "root": "x", "fold": True},
     "data: key 'data.fold' must be an integer 1..5 (SBU's 5-fold cross-validation), got True"),
    ({"format": "synthetic-sbu", "seed": 1.5}, "data: key 'data.seed' must be an integer, got 1.5"),
    ({"format": "synthetic-sbu", "difficulty": -0.1},
     "data: key 'data.difficulty' must be a finite number >= 0, got -0.1"),
    ({"format": "synthetic-sbu", "difficulty": True}, "data: key 'data.difficulty' must be a finite number >= 0, got True"),
    ({"format": "synthetic-sbu", "difficulty": "hard"},
     "data: key 'data.difficulty' must be a finite number >= 0, got 'hard'"),
    # several bad values: the first in the documented order (root, fold, length, ...) is the one reported
    ({"format": "synthetic-sbu", "velocity": 1, "length": 0, "seed": "s"},
     "data: key 'data.length' must be an integer >= 1 (frames), got 0"),
    ({"format": "sbu", "root": "x", "folds": 1, "fold": 9}, "data: unknown key 'data.folds' (did you mean 'fold'?)"),
])
def test_data_value_messages_are_exact(spec, message):
    with pytest.raises(ConfigError) as info:
        check_data_spec(spec)
    assert str(info.value).startswith(message), str(info.value)


def test_data_values_in_range_pass():
    check_data_spec({"format": "synthetic-sbu", "seed": 0, "difficulty": 0, "length": 1, "velocity": False})
    check_data_spec({"format": "synthetic-fpha", "difficulty": 2.5, "protocol": "1:1"})
    check_data_spec({"format": "sbu", "root": "r", "fold": 5})


@pytest.mark.parametrize("changes, message", [
    ({"model": ""}, "key 'model' must name a registered model, got ''"),
    ({"epochs": 0}, "key 'epochs' must be >= 1, got 0"),
    ({"checkpoint_every": 0}, "key 'checkpoint_every' must be >= 1, got 0"),
    ({"momentum": -0.5}, "key 'momentum' must be >= 0, got -0.5"),
    ({"weight_decay": -1.0, "optimizer": "nope"}, "key 'weight_decay' must be >= 0, got -1.0"),  # ranges first
    ({"gamma": 1.5}, "key 'gamma' must be in (0, 1], got 1.5"),
    ({"milestones": [-1]}, "key 'milestones' must be increasing non-negative epochs, got [-1]"),
    ({"device": "cuda:7", "schedule": "bad"}, "key 'schedule' must be one of cosine, step, constant, got 'bad'"),
    ({"data": {"format": "digits", "root": "x"}}, "unknown key 'data.root'"),
])
def test_train_config_value_messages_are_exact(changes, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{"model": "stgcn", **changes})
    assert str(info.value).startswith("TrainConfig: " + message), str(info.value)


def test_config_checks_are_below_the_complexity_limit():
    import subprocess
    import sys

    import prunekit.pipeline.config as config

    pytest.importorskip("ruff")
    text = Path(config.__file__).read_text()
    assert "noqa: C901" not in text
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "C901", "--ignore-noqa",
                           "--isolated", "--config", "lint.mccabe.max-complexity = 15", config.__file__],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_config_without_pyyaml_names_the_extra(tmp_path, monkeypatch):
    import sys

    from prunekit.pipeline.config import MissingExtraError

    p = _write(tmp_path, "model: stgcn\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    with pytest.raises(MissingExtraError, match=r"PyYAML.*pip install 'prunekit\[yaml\]'") as info:
        load_config(p)
    assert isinstance(info.value, ImportError) and isinstance(info.value, RuntimeError)
    assert info.value.name == "yaml"
    assert TrainConfig.from_dict({"model": "stgcn", "epochs": 2}).epochs == 2  # dicts need no YAML
    check_data_spec({"format": "digits"})
