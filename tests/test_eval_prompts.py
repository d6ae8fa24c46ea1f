"""Prompt sets and the repeat rule (docs/EVALUATION.md §2), seeds (§3), and the config format."""
from __future__ import annotations

import importlib.util

import pytest

from lyco.errors import ConfigError
from lyco.eval.config import EvalConfig, load_eval_config
from lyco.eval.prompts import build_leaf, build_leaves, derive_agnostic, expand, resolve_source, template_groups


def test_expand_reference_rule():
    counts = lambda idx: [idx.count(i) for i in sorted(set(idx))]       # noqa: E731
    assert counts(expand(3, 100)) == [34, 33, 33]
    assert counts(expand(7, 100)) == [15, 15, 14, 14, 14, 14, 14]
    assert expand(150, 100) == list(range(100))                          # n > 100: the first 100, one each
    assert [k // 10 for k in range(100)] == expand(10, 100)              # <alter>: image k -> prompt k // 10
    assert counts(expand(5, 100)) == [20] * 5                            # <style>: 5 x 20
    assert expand(1, 4) == [0, 0, 0, 0] and expand(0, 4) == []


def test_builtin_templates_are_the_papers():
    groups = template_groups()
    assert groups == ["canal", "castle", "garden", "person", "plushie", "sculpture", "style", "waterfall"]
    cfg = EvalConfig(concepts=[{"category": "x", "class": "y", "descriptor": "d"}])
    for g in groups:
        lines = resolve_source(g, "alter", cfg, "test")
        assert len(lines) == 10 and all("{}" in t for t in lines), g
    assert "{} with with cloudy sky" in resolve_source("garden", "alter", cfg, "test")     # the files' wording
    style = resolve_source("paper", "style", cfg, "test")
    assert style[0] == "{} in the style of pencil drawing" and len(style) == 5
    with pytest.raises(ConfigError, match="did you mean 'person'"):
        resolve_source("persn", "alter", cfg, "test")


def _dataset(tmp_path, captions):
    from PIL import Image
    d = tmp_path / "data" / "10_whoo anime girl"
    d.mkdir(parents=True)
    for i, cap in enumerate(captions):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i:02d}.png")
        (d / f"{i:02d}.txt").write_text(cap + "\n")
    return tmp_path / "data"


def test_leaf_from_dataset_templates_and_files(tmp_path):
    _dataset(tmp_path, ["whoo anime girl, toid outfit, smile", "whoo anime girl, toid outfit, sitting"])
    (tmp_path / "agnostic.txt").write_text("a girl in a park\n\na girl on a bench\n")
    cfg = EvalConfig(root=str(tmp_path), generation={"images": 20}, concepts=[{
        "category": "anime", "class": "abukuma", "subclass": "toid", "descriptor": "whoo anime girl, toid outfit",
        "dataset": "data", "prompts": {"alter": "person", "agnostic": "agnostic.txt", "agnostic_class": "none"}}])
    leaf = build_leaf(cfg.concepts[0], cfg)
    assert leaf.id == "anime/abukuma/toid" and len(leaf.images) == 2
    assert leaf.trigger == "whoo" and leaf.class_words == "anime girl, toid outfit"
    sets = leaf.prompt_sets
    assert sets["train"].prompts == ("whoo anime girl, toid outfit, smile", "whoo anime girl, toid outfit, sitting")
    assert sets["train"].image_prompts()[:11] == [sets["train"].prompts[0]] * 10 + [sets["train"].prompts[1]]
    assert sets["trigger"].prompts == ("whoo anime girl, toid outfit",)
    assert sets["alter"].prompts[0] == ("whoo anime girl, toid outfit selfie standing under the pink blossoms of a "
                                        "cherry tree")
    assert sets["style"].prompts[4] == "whoo anime girl, toid outfit in the style of pixel art"
    assert sets["agnostic"].prompts == ("a girl in a park", "a girl on a bench")
    assert "agnostic_class" not in sets
    assert all(ps.n_images == 20 for ps in sets.values())


def test_style_leaf_and_derived_agnostic(tmp_path):
    cfg = EvalConfig(root=str(tmp_path), generation={"images": 10, "images_per_type": {"alter": 30}}, concepts=[
        {"category": "styles", "class": "ghibli", "descriptor": "pgs style", "prompts": {"alter": "style"}}])
    leaf = build_leaf(cfg.concepts[0], cfg)
    assert leaf.style_concept and "style" not in leaf.prompt_sets and "train" not in leaf.prompt_sets
    assert leaf.prompt_sets["alter"].n_images == 30
    assert leaf.prompt_sets["agnostic"].prompts[0] == "a city skyline during sunset"
    assert leaf.prompt_sets["agnostic_class"].prompts[0] == "style of a city skyline during sunset"
    d = derive_agnostic(["A peacock in front of the adl scene"], "adl scene", "adl", "scene")
    assert d == {"agnostic": ["A peacock in front of the"], "agnostic_class": ["A peacock in front of the scene"]}


def test_config_errors_and_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'generation.stpes' \(did you mean 'steps'"):
        EvalConfig(concepts=[{"category": "a", "class": "b", "descriptor": "c"}], generation={"stpes": 3})
    with pytest.raises(ConfigError, match=r"unknown key 'concepts\[0\].prompts.alterr'"):
        EvalConfig(concepts=[{"category": "a", "class": "b", "descriptor": "c", "prompts": {"alterr": "x"}}])
    with pytest.raises(ConfigError, match="give 'adapter'"):
        EvalConfig(concepts=[{"category": "a", "class": "b", "descriptor": "c"}], checkpoints=[{"name": "x"}])
    with pytest.raises(ConfigError, match="unknown metric 'vendy'"):
        EvalConfig(concepts=[{"category": "a", "class": "b", "descriptor": "c"}], metrics={"names": ["vendy"]})
    with pytest.raises(ConfigError, match="reserved"):
        EvalConfig(concepts=[{"category": "a", "class": "b", "descriptor": "c"}],
                   checkpoints=[{"name": "base", "adapter": "x"}])
    p = tmp_path / "e.toml"
    p.write_text('base = "m"\n[[concepts]]\ncategory = "a"\nclass = "b"\ndescriptor = "t c"\n'
                 '[[checkpoints]]\nname = "x"\nadapter = "x.safetensors"\nconcepts = ["nope"]\n')
    cfg = load_eval_config(p)
    assert cfg.root == str(tmp_path) and cfg.path("x.safetensors") == tmp_path / "x.safetensors"
    assert cfg.cache_dir == tmp_path / "eval_out" / "cache"
    with pytest.raises(ConfigError, match="matches no concept"):
        build_leaves(cfg)
    (tmp_path / "bad.toml").write_text("base = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_eval_config(tmp_path / "bad.toml")


@pytest.mark.skipif(importlib.util.find_spec("lyco.world.dataset") is None, reason="micro-world dataset writer missing")
def test_world_concept_prompt_sets(tmp_path):
    cfg = EvalConfig(root=str(tmp_path), generation={"images": 12}, concepts=[{"world": "olis"}])
    leaf = build_leaf(cfg.concepts[0], cfg)
    assert (tmp_path / "eval_out" / "cache" / "datasets" / "olis" / "concept.json").is_file()
    assert leaf.descriptor == "olis creature" and leaf.category == "character" and leaf.class_ == "olis"
    assert len(leaf.images) == len(leaf.captions) > 0
    assert set(leaf.prompt_sets) >= {"train", "trigger", "alter", "style", "agnostic", "agnostic_class"}
    assert all("olis" in p for p in leaf.prompt_sets["alter"].prompts)
    assert not any("olis" in p for p in leaf.prompt_sets["agnostic"].prompts)
    again = build_leaf(cfg.concepts[0], cfg)                       # the dataset is reused, same sets
    assert again.prompt_sets == leaf.prompt_sets


def test_example_configs_parse():
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "examples" / "eval"
    files = sorted(folder.glob("*.toml"))
    assert len(files) >= 2
    for f in files:
        cfg = load_eval_config(f)
        assert cfg.concepts and cfg.checkpoints, f
