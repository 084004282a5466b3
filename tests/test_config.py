from pathlib import Path

import pytest

from ft_engine.config import FIELD_DOCS, RunConfig
from ft_engine.errors import ConfigError, UserError


def test_validation_lists_every_problem_with_its_fix(chat_file):
    cfg = RunConfig(data=str(chat_file), learning_rate=-1, batch_size=0, lora_r=0, max_seq_len=4,
                    val_fraction=0.9, method="lora")
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    msgs = e.value.problems
    assert "learning_rate must be > 0, got -1" in msgs
    assert "batch_size must be >= 1, got 0" in msgs
    assert any(m.startswith("lora_r must be >= 1") for m in msgs)
    assert any(m.startswith("max_seq_len must be between") for m in msgs)
    assert any(m.startswith("val_fraction") for m in msgs)
    assert len(msgs) == 5
    assert str(e.value).startswith("5 invalid settings: ")


def test_defaults_are_valid(chat_file):
    RunConfig(data=str(chat_file)).validate()


@pytest.mark.parametrize("value", ["bad", "lora2", ""])
def test_method_must_be_known(chat_file, value):
    with pytest.raises(ConfigError, match="method must be one of full, lora, qlora"):
        RunConfig(data=str(chat_file), method=value).validate()


@pytest.mark.parametrize("model,ok", [
    ("bundled", True),
    ("meta-llama/Llama-3.2-1B-Instruct", True),
    ("../../etc/passwd", False),
    ("owner/../../secret", False),
    ("/no/such/folder", False),
    ("just-a-name", False),
    ("a/b/c", False),
])
def test_model_ids(chat_file, model, ok):
    cfg = RunConfig(data=str(chat_file), model=model)
    if ok:
        cfg.validate()
    else:
        with pytest.raises(ConfigError, match="model"):
            cfg.validate()


def test_local_model_folder_needs_config_json(chat_file, tmp_path):
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        RunConfig(data=str(chat_file), model=str(tmp_path / "empty_model")).validate()


@pytest.mark.parametrize("name", ["../escape", "a/b", "x" * 65, ".hidden"])
def test_bad_run_names(chat_file, name):
    with pytest.raises(ConfigError, match="run_name"):
        RunConfig(data=str(chat_file), run_name=name).validate()


def test_missing_data_file():
    with pytest.raises(ConfigError, match="data file not found: nope.jsonl"):
        RunConfig(data="nope.jsonl").validate()


def test_yaml_round_trip(tmp_path, chat_file):
    cfg = RunConfig(data=str(chat_file), method="qlora", lora_target_modules=["q_proj", "v_proj"],
                    learning_rate=1e-4, double_quant=False)
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(p) == cfg


def test_yaml_errors_name_the_setting(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("learning_rate: fast\nbatch_size: 2.5\nlearnin_rate: 1\n")
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml(p)
    text = str(e.value)
    assert "learning_rate: expected a number, got 'fast'" in text
    assert "batch_size: expected a whole number, got 2.5" in text
    assert "unknown setting 'learnin_rate'" in text
    p.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        RunConfig.from_yaml(p)
    p.write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid UTF-8 YAML"):
        RunConfig.from_yaml(p)
    with pytest.raises(UserError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


def test_every_field_is_documented():
    import dataclasses
    assert {f.name for f in dataclasses.fields(RunConfig)} == set(FIELD_DOCS)
    assert all(len(doc) > 10 for doc in FIELD_DOCS.values())


def test_runs_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FT_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert RunConfig().runs_dir == str(tmp_path / "elsewhere")
    monkeypatch.delenv("FT_RUNS_DIR")
    assert Path(RunConfig().runs_dir) == Path("runs")
