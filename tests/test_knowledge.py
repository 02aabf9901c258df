from __future__ import annotations

import shutil
from pathlib import Path
from string import Formatter

import pytest

from bot.config import ALL_LANGUAGES
from bot.knowledge import BUNDLED_KNOWLEDGE, Knowledge, KnowledgeError, load_yaml_mapping

LANGS = list(ALL_LANGUAGES)


@pytest.fixture
def knowledge_copy(tmp_path: Path) -> Path:
    target = tmp_path / "knowledge"
    shutil.copytree(BUNDLED_KNOWLEDGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_bundled_knowledge_has_every_template_in_every_language() -> None:
    knowledge = Knowledge.load(None, LANGS, "en")
    keys = set(knowledge.templates.by_language["en"])
    assert {"greeting", "goodbye", "fallback", "welcome", "error.message_empty"} <= keys
    for lang in LANGS:
        path = BUNDLED_KNOWLEDGE / "templates" / f"{lang}.yaml"
        data, _ = load_yaml_mapping(path)
        assert set(data) == keys, f"{path} differs from en.yaml"
        for key in keys:  # every placeholder is a plain name the code can supply
            names = {n for _, n, _, _ in Formatter().parse(data[key]) if n}
            assert all(n.isidentifier() for n in names), (lang, key, names)
            text = knowledge.templates.render(key, lang, **{n: "X" for n in names})
            assert text


def test_replies_are_really_translated() -> None:
    knowledge = Knowledge.load(None, LANGS, "en")
    greetings = {knowledge.templates.render("greeting", lang, company="X") for lang in LANGS}
    assert len(greetings) == len(LANGS)


def test_catalogue_is_loaded_with_decimal_prices() -> None:
    catalogue = Knowledge.load(None, LANGS, "en").catalogue
    assert {"SPC", "WPC", "PVC", "laminate"} <= {p.type for p in catalogue.values()}
    spc = catalogue["SPC-5-05"]
    assert str(spc.thickness_mm) == "5" or spc.thickness_mm == 5
    assert spc.price_usd_m2 > 0 and spc.m2_per_20gp > 0


def test_missing_template_key_names_file_and_key(knowledge_copy: Path) -> None:
    path = knowledge_copy / "templates" / "pt.yaml"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if not line.startswith("goodbye:")]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(KnowledgeError) as info:
        Knowledge.load(knowledge_copy, LANGS, "en")
    assert "pt.yaml" in str(info.value) and "goodbye" in str(info.value)


def test_yaml_syntax_error_names_file_and_line(knowledge_copy: Path) -> None:
    path = knowledge_copy / "templates" / "fr.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, 'broken: "unterminated')
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"fr\.yaml: line \d+"):
        Knowledge.load(knowledge_copy, LANGS, "en")


def test_placeholder_mismatch_is_rejected_with_line(knowledge_copy: Path) -> None:
    path = knowledge_copy / "templates" / "de.yaml"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("greeting:"))
    lines[number - 1] = 'greeting: "Hallo von {firma}"'
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(KnowledgeError) as info:
        Knowledge.load(knowledge_copy, LANGS, "en")
    assert f"de.yaml: line {number}: key 'greeting'" in str(info.value)


def test_extra_or_empty_template_is_rejected(knowledge_copy: Path) -> None:
    path = knowledge_copy / "templates" / "es.yaml"
    path.write_text(path.read_text(encoding="utf-8") + '\nsolo_en_espanol: "hola"\n',
                    encoding="utf-8")
    with pytest.raises(KnowledgeError, match="solo_en_espanol"):
        Knowledge.load(knowledge_copy, LANGS, "en")
    path.write_text(path.read_text(encoding="utf-8").replace('solo_en_espanol: "hola"', ""),
                    encoding="utf-8")
    Knowledge.load(knowledge_copy, LANGS, "en")
    (knowledge_copy / "templates" / "ar.yaml").write_text('greeting: ""\n', encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"ar\.yaml: line 1: key 'greeting'"):
        Knowledge.load(knowledge_copy, LANGS, "en")


def test_catalogue_error_names_line_and_column(knowledge_copy: Path) -> None:
    path = knowledge_copy / "catalogue.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    cells = lines[2].split(",")
    cells[5] = "cheap"  # price_usd_m2
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"catalogue\.csv: line 3: price_usd_m2"):
        Knowledge.load(knowledge_copy, LANGS, "en")


def test_missing_knowledge_directory(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="knowledge directory not found"):
        Knowledge.load(tmp_path / "nowhere", LANGS, "en")
