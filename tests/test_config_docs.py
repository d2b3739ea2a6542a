"""docs/configuration.md is generated from the config dataclasses and must be current."""
import dataclasses
import typing
from pathlib import Path

from rsfm_ds.config_docs import REGENERATE, _docs, _item_class, documented_configs, render_configuration_doc

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def walk(cls, prefix=""):
    """(dotted name, owning class, field name) of every field, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = _item_class(hints[f.name])
        if sub is None:
            yield f"{prefix}{f.name}", cls, f.name
        else:
            listed = not dataclasses.is_dataclass(hints[f.name])
            yield from walk(sub, f"{prefix}{f.name}{'[]' if listed else ''}.")


def test_configuration_doc_is_current():
    assert DOC.is_file(), f"docs/configuration.md is missing: run `{REGENERATE}`"
    assert DOC.read_text(encoding="utf-8") == render_configuration_doc(), (
        f"docs/configuration.md is out of date with the config classes: run `{REGENERATE}`")


def test_every_field_is_documented():
    text = render_configuration_doc()
    for cls, command, _ in documented_configs():
        assert f"## {cls.__name__}" in text and f"`{command}`" in text
        fields = list(walk(cls))
        assert fields, cls
        for dotted, owner, name in fields:
            assert f"| `{dotted}` |" in text, f"{cls.__name__}: field {dotted} missing from the page"
            assert _docs(owner).get(name), f"{owner.__name__}.{name} ({dotted}) has no docstring"
