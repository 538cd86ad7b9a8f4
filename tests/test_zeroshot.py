"""Zero-shot classification end to end with tiny random open_clip and transformers CLIP/SigLIP models:
kenner's scores equal the model's own image-text computation, prompts come from names and template files,
text embeddings are cached, and ``--init zeroshot`` starts a linear head with the zero-shot answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import transformers
from PIL import Image

from kenner.cli import main
from kenner.encoders import create_encoder
from kenner.encoders.prompts import builtin_templates, display_names, prompts_per_class
from kenner.errors import KennerError
from tiny_clip import save_hf, save_open_clip

NAMES = {"alpha": "red thing", "beta": "green thing", "gamma": "blue thing"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_clip")
    return {
        "open_clip": save_open_clip(root / "open_clip"),
        "open_clip-siglip": save_open_clip(root / "open_clip_siglip", siglip=True),
        "hf-clip": save_hf(root / "hf_clip", "clip"),
        "hf-siglip": save_hf(root / "hf_siglip", "siglip"),
    }


def _train(data: Path, out: Path, encoder: str, cache: Path, *extra: str) -> pd.DataFrame:
    args = ["train", "--method", "zeroshot", "--data", str(data), "--out-dir", str(out), "--encoder", encoder]
    common = ["--cache-dir", str(cache), "--device", "cpu", "--no-track", "--num-workers", "0", "-q"]
    assert main([*args, *common, *extra]) == 0
    return pd.read_parquet(out / "predictions.parquet").set_index("sample_id")


def _direct_scores(spec: str, paths: list[Path], prompts: list[list[str]]) -> np.ndarray:
    """Class scores computed with the model's own API (not kenner's zero-shot code)."""
    encoder = create_encoder(spec, backend="torch")
    transform = encoder.preprocessing.transform()
    pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    family, _, target = spec.partition(":")
    with torch.no_grad():
        if family == "open_clip":
            model, tokenizer = encoder.model, open_clip.get_tokenizer(target)
            image = model.encode_image(pixels, normalize=True)
            templates = [lambda index, k=k: prompts[index][k] for k in range(len(prompts[0]))]
            text = open_clip.build_zero_shot_classifier(model, tokenizer, list(range(len(prompts))), templates)
            logits = model.logit_scale.exp() * image @ text
            bias = model.logit_bias
        else:
            model = transformers.AutoModel.from_pretrained(target).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(target)
            image = model.get_image_features(pixel_values=pixels).pooler_output
            image = image / image.norm(dim=-1, keepdim=True)
            siglip = model.config.model_type == "siglip"
            pad = {"padding": "max_length", "max_length": 16} if siglip else {"padding": True}
            rows = []
            for class_prompts in prompts:
                tokens = tokenizer(class_prompts, return_tensors="pt", **pad)
                text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                text = text.pooler_output / text.pooler_output.norm(dim=-1, keepdim=True)
                mean = text.mean(dim=0)
                rows.append(mean / mean.norm())
            logits = model.logit_scale.exp() * image @ torch.stack(rows).T
            bias = model.logit_bias if siglip else None
    if bias is not None:
        return torch.sigmoid(logits + bias).detach().numpy()
    return torch.softmax(logits, dim=1).detach().numpy()


@pytest.mark.parametrize("family", ["open_clip", "open_clip-siglip", "hf-clip", "hf-siglip"])
def test_zero_shot_scores_are_the_models_own(
    family: str, models: dict[str, str], grouped_folder_dataset: Path, tmp_path: Path
) -> None:
    names_file = tmp_path / "names.json"
    names_file.write_text(json.dumps(NAMES))
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a photo of a {c}.", "a drawing of the {c}."]))
    spec = models[family]
    run = tmp_path / "run"
    extra = ["--class-names", str(names_file), "--templates", str(templates)]
    predictions = _train(grouped_folder_dataset, run, spec, tmp_path / "cache", *extra)

    classes = list(json.loads((run / "class_to_idx.json").read_text()))
    assert classes == ["alpha", "beta", "gamma"]
    prompts = [[f"a photo of a {NAMES[c]}.", f"a drawing of the {NAMES[c]}."] for c in classes]
    paths = [grouped_folder_dataset / label / name for label, name in _files(grouped_folder_dataset)]
    expected = _direct_scores(spec, paths, prompts)
    ids = [f"{path.parent.name}/{path.stem}" for path in paths]
    got = np.stack([_full_scores(predictions.loc[i], classes) for i in ids])
    np.testing.assert_allclose(got, expected, rtol=5e-3, atol=1e-5)  # JPEG decoding differs a little
    if "siglip" in family:  # independent sigmoids, not a distribution
        assert not np.allclose(got.sum(axis=1), 1.0)
    else:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
    report = (run / "report.md").read_text()
    assert "sigmoid (SigLIP)" in report if "siglip" in family else "softmax (CLIP)" in report
    assert main(["evaluate", str(run), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "-q"]) == 0


def _files(root: Path) -> list[tuple[str, str]]:
    return sorted((path.parent.name, path.name) for path in root.glob("*/*") if path.is_file())


def _full_scores(row: pd.Series, classes: list[str]) -> np.ndarray:
    scores = dict(zip(row["topk_labels"], row["topk_scores"], strict=True))
    assert set(scores) == set(classes), "three classes: the top-k lists every class"
    return np.array([scores[c] for c in classes])


def test_text_embeddings_are_cached_by_model_and_prompts(
    models: dict[str, str], grouped_folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = _train(grouped_folder_dataset, tmp_path / "a", models["open_clip"], cache)
    assert "computed in" in (tmp_path / "a" / "report.md").read_text()

    import kenner.encoders.text as text

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower ran although the class embeddings are cached")

    monkeypatch.setattr(text, "load_text_tower", no_text_tower)
    again = _train(grouped_folder_dataset, tmp_path / "b", models["open_clip"], cache)
    assert "| cached" in (tmp_path / "b" / "report.md").read_text()
    assert (again["predicted"] == first["predicted"]).all()
    with pytest.raises(AssertionError, match="text tower ran"):  # other prompts: other embeddings
        _train(grouped_folder_dataset, tmp_path / "c", models["open_clip"], cache, "--templates", "photo")
    with pytest.raises(AssertionError, match="text tower ran"):  # another model with the same prompts
        _train(grouped_folder_dataset, tmp_path / "d", models["open_clip-siglip"], cache)


def test_hf_text_weights_are_part_of_the_cache_key(
    models: dict[str, str], grouped_folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(models["hf-clip"].removeprefix("hf:"))
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    model = transformers.CLIPModel.from_pretrained(source)
    with torch.no_grad():
        model.text_projection.weight.mul_(-1)  # the same image tower, another text tower
    model.save_pretrained(changed)
    cache = tmp_path / "cache"
    first = _train(grouped_folder_dataset, tmp_path / "a", f"hf:{source}", cache)
    other = _train(grouped_folder_dataset, tmp_path / "b", f"hf:{changed}", cache)
    assert "computed in" in (tmp_path / "b" / "report.md").read_text()
    assert not np.allclose(np.stack(first["topk_scores"]), np.stack(other["topk_scores"]))


def test_init_zeroshot_starts_a_linear_head_with_the_zero_shot_answers(
    models: dict[str, str], grouped_folder_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    for family in ("open_clip", "hf-clip"):
        spec = models[family]
        zero = _train(grouped_folder_dataset, tmp_path / f"zero-{family}", spec, cache)
        args = ["train", "--method", "linear", "--data", str(grouped_folder_dataset), "--encoder", spec, "-q"]
        common = ["--cache-dir", str(cache), "--device", "cpu", "--no-track", "--num-workers", "0"]
        out = tmp_path / f"head-{family}"
        run = ["--out-dir", str(out), "--epochs", "1", "--lr", "1e-9", "--init", "zeroshot"]
        assert main([*args, *common, *run]) == 0  # one step of a negligible rate: the starting head
        started = pd.read_parquet(out / "predictions.parquet").set_index("sample_id").loc[zero.index]
        assert [labels[0] for labels in started["topk_labels"]] == [labels[0] for labels in zero["topk_labels"]]


def test_prompts_from_names_and_template_files(tmp_path: Path) -> None:
    labels = ["tabby_cat", "dog"]
    names_csv = tmp_path / "names.csv"
    names_csv.write_text("label,name\ndog,puppy\n")
    names = display_names(labels, str(names_csv))
    assert names == ["tabby cat", "puppy"]
    assert prompts_per_class(labels, names, "photo") == [["a photo of a tabby cat."], ["a photo of a puppy."]]
    assert len(builtin_templates("imagenet80")) == 80 and len(builtin_templates("simple")) == 7
    per_class = tmp_path / "cupl.json"
    per_class.write_text(json.dumps({"tabby_cat": ["a striped cat."], "puppy": ["a young dog.", "a pup."]}))
    assert prompts_per_class(labels, names, str(per_class)) == [["a striped cat."], ["a young dog.", "a pup."]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (["a photo of a thing."], "with {c}"),
        ({"tabby_cat": ["x"]}, "no list of prompts for class 'dog'"),
        ("not json", "not a readable JSON"),
    ],
)
def test_bad_template_files_name_the_problem(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "templates.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(KennerError, match=message):
        prompts_per_class(["tabby_cat", "dog"], ["tabby cat", "dog"], str(path))
    with pytest.raises(KennerError, match="neither a built-in set"):
        prompts_per_class(["dog"], ["dog"], str(tmp_path / "missing.json"))


def test_zero_shot_needs_a_clip_like_encoder(
    grouped_folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "--method", "zeroshot", "--data", str(grouped_folder_dataset), "--out-dir", str(tmp_path / "r")]
    assert main([*args, "--cache-dir", str(tmp_path / "c"), "--no-track", "--num-workers", "0", "-q"]) == 2
    assert "zero-shot needs a CLIP or SigLIP encoder" in capsys.readouterr().err
