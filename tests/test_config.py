"""Typed configs: YAML + overrides, coercion, errors that name the field and the file."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pytest

from rsfm_ds.config import ConfigError, check, dump_yaml, field_docs, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 1.5e-4
    """Base learning rate."""
    betas: Tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""

    def __post_init__(self):
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")


@dataclass
class Run:
    name: str
    """Run name."""
    steps: int = 10
    """Optimizer steps."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer section."""
    tags: List[str] = field(default_factory=list)
    """Free-form tags."""
    resume: Optional[str] = None
    """Checkpoint to resume from."""


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\nsteps: 5\noptim:\n  lr: 1e-3\n")
    cfg = load_config(Run, path, ["optim.betas=[0.8, 0.9]", "steps=7", "tags=[x, y]"])
    assert cfg == Run(name="a", steps=7, optim=Optim(lr=1e-3, betas=(0.8, 0.9)), tags=["x", "y"])


def test_base_file_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nsteps: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nsteps: 4\n")
    assert load_config(Run, tmp_path / "child.yaml") == Run(name="base", steps=4)


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=-1"], "optim.lr: must be positive"),
    (["optim.lr=abc"], "optim.lr: expected a number"),
    (["steps=1.5"], "steps: expected an integer"),
    (["optim.momentum=0.9"], "optim.momentum: unknown field"),
    (["optim.betas=[1]"], "optim.betas: expected 2 items"),
    (["steps"], "expected section.field=value"),
])
def test_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(Run, overrides=["name=x", *overrides])


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\nstepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: stepz: unknown field"):
        load_config(Run, path)
    with pytest.raises(ConfigError, match="name: required field is missing"):
        load_config(Run)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Run, tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Run, overrides=["name=z", "resume=/tmp/ckpt"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(Run, path) == cfg


def test_field_docs_are_read_from_the_source():
    assert field_docs(Run)["steps"] == "Optimizer steps."
    assert field_docs(Optim)["betas"] == "AdamW betas."


def test_parse_overrides_nests_and_parses_yaml():
    assert parse_overrides(["a.b.c=1", "a.d=true", "e=null"]) == {"a": {"b": {"c": 1}, "d": True}, "e": None}


def test_a_section_given_in_part_keeps_its_other_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\noptim:\n  lr: 0.5\n")
    assert load_config(Run, path).optim == Optim(lr=0.5, betas=(0.9, 0.95))


def test_an_empty_child_section_keeps_the_base_files_values(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\noptim:\n  lr: 0.5\n  betas: [0.8, 0.9]\n")
    # `optim:` with only a comment under it reads as null; an override then names one field of it.
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  # lr comes from base.yaml\n")
    cfg = load_config(Run, tmp_path / "child.yaml", ["optim.betas=[0.7, 0.8]"])
    assert cfg.optim == Optim(lr=0.5, betas=(0.7, 0.8))
    assert load_config(Run, tmp_path / "child.yaml").optim == Optim(lr=0.5, betas=(0.8, 0.9))


def test_a_child_section_that_is_not_a_mapping_is_refused_naming_it(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\noptim:\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  - lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: optim: a section takes field: value lines"):
        load_config(Run, tmp_path / "child.yaml", ["optim.lr=0.2"])


def test_an_error_in_an_override_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\n")
    with pytest.raises(ConfigError, match=r"^override optim\.lr: expected a number"):
        load_config(Run, path, ["optim.lr=abc"])
    path.write_text("name: a\noptim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: optim\.lr: expected a number"):
        load_config(Run, path, ["steps=3"])
