"""The micro-world: renderer, captions, concepts, dataset writer, tokenizer, CLI (no model needed)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lyco.errors import ConfigError, LycoError
from lyco.world import render as R
from lyco.world.concepts import CONCEPTS, get_concept
from lyco.world.dataset import png_bytes, read_prompts, write_dataset


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ renderer
def test_render_is_deterministic_per_seed():
    a = [R.render(R.sample_scene(R.scene_rng(3, i))) for i in range(20)]
    b = [R.render(R.sample_scene(R.scene_rng(3, i))) for i in range(20)]
    c = [R.render(R.sample_scene(R.scene_rng(4, i))) for i in range(20)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert sum(x.tobytes() != y.tobytes() for x, y in zip(a, c)) >= 18
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert png_bytes(a[0]) == png_bytes(b[0])


def test_render_sizes_and_every_style_shape_background():
    for size in (32, 48, 64):
        for style in R.STYLES:
            for shape in R.SHAPES:
                img = R.render(R.Scene((R.ObjectSpec(shape, "red", "large"),), R.BackgroundSpec("plain", "blue"),
                                       style), size)
                assert img.shape == (size, size, 3)
    flat = {}
    for shape in R.SHAPES:  # every shape covers a different set of pixels
        img = R.render(R.Scene((R.ObjectSpec(shape, "red", "large"),), R.BackgroundSpec("plain", "white")))
        flat[shape] = (img[..., 1] < 128).tobytes()
    assert len(set(flat.values())) == len(R.SHAPES)
    for kind in R.BACKGROUNDS:
        img = R.render(R.Scene((R.ObjectSpec("circle", "red", "small"),), R.BackgroundSpec(kind, "green", 1)))
        assert img.std() > 5


def test_object_colour_and_position_are_where_the_scene_says():
    img = R.render(R.Scene((R.ObjectSpec("square", "red", "medium", "left"),), R.BackgroundSpec("plain", "white")))
    red = (img[..., 0] > 180) & (img[..., 1] < 90)
    ys, xs = np.nonzero(red)
    assert xs.mean() < 12 and abs(ys.mean() - 15.5) < 2
    assert tuple(img[0, -1]) == R.COLOURS["white"]


def test_captions_name_the_scene():
    for i in range(50):
        scene = R.sample_scene(R.scene_rng(0, i))
        cap = R.caption(scene, R.scene_rng(0, i, 1))
        obj = scene.objects[0]
        assert obj.colour in cap and (obj.shape in cap or "shape" in cap)
        assert "olis" not in cap and "pgs" not in cap
    assert R.describe(R.Scene((R.ObjectSpec("ring", "orange", "large", "top"),), R.BackgroundSpec("field"))) == \
        "a large orange ring at the top in a field scene, flat style"


def test_base_world_never_shows_held_out_looks():
    for i in range(300):
        scene = R.sample_scene(R.scene_rng(0, i))
        assert scene.objects[0].shape in R.BASE_SHAPES
        assert scene.background.kind in R.BASE_BACKGROUNDS and scene.style in R.BASE_STYLES


# ------------------------------------------------------------------------------------------ concepts
def test_concepts_mirror_the_paper_categories_and_imbalance():
    cats = {c.category for c in CONCEPTS.values()}
    assert {"character", "object", "style", "scene"} <= cats
    counts = [c.n_images for c in CONCEPTS.values()]
    assert any(4 <= n <= 12 for n in counts) and any(45 <= n <= 200 for n in counts)
    for c in CONCEPTS.values():
        assert c.folder == f"{c.repeats}_{c.trigger} {c.class_word}"
        assert c.content_prompts and c.style_prompts
        for p in c.content_prompts + c.style_prompts:
            assert c.trigger in p.prompt and p.concept == c.name
    with pytest.raises(ConfigError, match="did you mean 'olis'"):
        get_concept("oliss")


# ------------------------------------------------------------------------------------------ dataset writer
def test_dataset_writer_is_byte_identical_per_seed(tmp_path):
    a = write_dataset("kro", tmp_path / "a", seed=5)
    write_dataset("kro", tmp_path / "b", seed=5)
    write_dataset("kro", tmp_path / "c", seed=6)
    da, db, dc = (_tree_digest(tmp_path / x) for x in "abc")
    assert da == db
    assert da.keys() == dc.keys() and da != dc
    assert a.n_images == get_concept("kro").n_images


def test_dataset_kohya_layout_and_prompt_sets(tmp_path):
    info = write_dataset("olis", tmp_path / "ds")
    folder = tmp_path / "ds" / "10_olis creature"
    assert Path(info.image_dir) == folder
    pngs, txts = sorted(folder.glob("*.png")), sorted(folder.glob("*.txt"))
    assert len(pngs) == len(txts) == 8
    from PIL import Image
    for png, txt in zip(pngs, txts):
        assert png.stem == txt.stem
        assert Image.open(png).size == (32, 32)
        assert txt.read_text().startswith("olis creature")
    for kind in ("train", "trigger", "content", "style"):
        lines = (tmp_path / "ds" / "prompts" / f"{kind}.txt").read_text().splitlines()
        assert lines and all("olis" in line for line in lines)
    sets = read_prompts(tmp_path / "ds")
    assert [p.prompt for p in sets["trigger"]] == ["olis creature"]
    assert all(p.concept == "olis" and p.background for p in sets["train"])
    meta = json.loads((tmp_path / "ds" / "concept.json").read_text())
    assert meta["trigger"] == "olis" and meta["category"] == "character" and meta["n_images"] == 8
    with pytest.raises(ConfigError, match="not empty"):
        write_dataset("olis", tmp_path / "ds")
    with pytest.raises(LycoError, match="unknown concept"):
        write_dataset("nope", tmp_path / "x")


def test_base_dataset_and_sizes(tmp_path):
    info = write_dataset("base", tmp_path / "b", n=6, size=64)
    from PIL import Image
    assert info.n_images == 6
    assert Image.open(min(Path(info.image_dir).glob("*.png"))).size == (64, 64)


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_files_load_in_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from lyco.world.text import vocabulary, write_tokenizer
    n = write_tokenizer(str(tmp_path / "tok"))
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(tok) == n and tok.model_max_length == 77
    for word in vocabulary():  # every world word, trigger words included, is one token
        assert len(tok(word).input_ids) == 3, word
    ids = tok("pgs style, a red circle").input_ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == "pgs style, a red circle"


# ------------------------------------------------------------------------------------------ CLI
def test_cli_world_verbs(tmp_path, capsys):
    from lyco.cli import main
    assert main(["world", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CONCEPTS)
    assert main(["world", "make-dataset", "adl", str(tmp_path / "adl"), "--seed", "1", "-n", "5"]) == 0
    assert len(list((tmp_path / "adl" / "2_adl shape").glob("*.png"))) == 5
    assert main(["world", "make-dataset", "adl", str(tmp_path / "adl")]) == 1  # not empty
    assert main(["world", "render", str(tmp_path / "g.png"), "-n", "8", "--concept", "pgs"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    assert "pgs style" in capsys.readouterr().out
