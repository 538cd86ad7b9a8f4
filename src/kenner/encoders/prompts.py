"""Zero-shot prompts: class display names and prompt templates (torch-free).

Class names: the labels themselves, or a ``--class-names FILE`` mapping label -> display name (a JSON object,
or a CSV/TSV with two columns ``label,name``; labels it does not name keep their label, ``_`` and ``-`` read
as spaces). Templates: a built-in set (``photo``, ``simple``, ``imagenet80``) or a ``--templates FILE`` in
CLIP_benchmark's JSON format: a list of strings with ``{c}`` where the class name goes, or an object mapping
each class (label or display name) to its own list of full prompts (CuPL style).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from kenner.errors import KennerError

TEMPLATE_SETS = ("photo", "simple", "imagenet80")
PHOTO = ("a photo of a {c}.",)


def builtin_templates(name: str) -> list[str]:
    """The built-in template set ``name``: ``photo`` (one prompt), ``simple`` (open_clip's 7 ImageNet
    prompts), ``imagenet80`` (the 80 prompts of the CLIP paper)."""
    if name == "photo":
        return list(PHOTO)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    sets = {"simple": SIMPLE_IMAGENET_TEMPLATES, "imagenet80": OPENAI_IMAGENET_TEMPLATES}
    if name not in sets:
        raise KennerError(f"unknown templates {name!r}; use one of {', '.join(TEMPLATE_SETS)} or a JSON file")
    return [template("{c}") for template in sets[name]]


def display_names(labels: list[str], path: str | None) -> list[str]:
    """What each label is called in the prompts."""
    mapping = _read_names(Path(path)) if path else {}
    return [mapping.get(label, label.replace("_", " ").replace("-", " ")) for label in labels]


def prompts_per_class(labels: list[str], names: list[str], templates: str) -> list[list[str]]:
    """The prompts of every class, in ``labels`` order (``templates``: a built-in set or a JSON file)."""
    if templates in TEMPLATE_SETS:
        return [[t.replace("{c}", name) for t in builtin_templates(templates)] for name in names]
    path = Path(templates)
    if not path.is_file():
        sets = ", ".join(TEMPLATE_SETS)
        raise KennerError(f"--templates: {templates!r} is neither a built-in set ({sets}) nor a file")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise KennerError(f"--templates {path}: not a readable JSON file ({error})") from error
    if isinstance(loaded, list):
        if not loaded or not all(isinstance(t, str) and "{c}" in t for t in loaded):
            raise KennerError(f"--templates {path}: a template list needs strings with {{c}} where the name goes")
        return [[t.replace("{c}", name) for t in loaded] for name in names]
    if isinstance(loaded, dict):
        prompts = []
        for label, name in zip(labels, names, strict=True):
            found = loaded.get(label, loaded.get(name))
            if not found or not isinstance(found, list) or not all(isinstance(p, str) for p in found):
                raise KennerError(f"--templates {path}: no list of prompts for class {label!r} (or {name!r})")
            prompts.append(list(found))
        return prompts
    raise KennerError(f"--templates {path}: expected a JSON list of templates or an object of prompts per class")


def _read_names(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise KennerError(f"--class-names: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except ValueError as error:
            raise KennerError(f"--class-names {path}: invalid JSON ({error})") from error
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise KennerError(f"--class-names {path}: expected a JSON object label -> display name")
        return {str(k): v for k, v in mapping.items()}
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    mapping = {}
    for number, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), start=1):
        if not row or (number == 1 and [c.strip().lower() for c in row[:2]] == ["label", "name"]):
            continue
        if len(row) < 2 or not row[1].strip():
            raise KennerError(f"--class-names {path}, row {number}: expected two columns label{delimiter}name")
        mapping[row[0].strip()] = row[1].strip()
    return mapping
