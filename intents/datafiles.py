"""Reading the YAML data files quickly: libyaml's C parser when PyYAML has it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=Loader)


def compose_yaml_text(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=Loader)


def read_yaml(path: Path) -> Any:
    return load_yaml_text(path.read_text(encoding="utf-8"))
