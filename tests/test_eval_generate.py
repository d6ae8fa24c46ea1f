"""Generation (docs/EVALUATION.md §3): per-image seeds, long-prompt chunks, cache keys, work windows; SD1 and SDXL
pipelines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lyco.eval.config import Generation
from lyco.eval.generate import (
    ImageJob,
    chunk_ids,
    encode_chunked,
    generate_jobs,
    job_key,
    n_chunks,
    settings_dict,
    windows,
)
from sd_tiny import make_pipeline

LONG = "olis creature, small, top, blue background, outline style"


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline("sd1")


def test_chunked_prompt_encoding(pipe):
    assert pipe.tokenizer.model_max_length == 16                      # 14 tokens per chunk
    assert n_chunks(pipe, "olis creature", 4) == 1
    assert n_chunks(pipe, LONG, 4) == 4 and n_chunks(pipe, LONG, 2) == 2
    ids = chunk_ids(pipe, LONG, 2)
    tok = pipe.tokenizer
    assert ids.shape == (2, 16) and (ids[:, 0] == tok.bos_token_id).all() and (ids[:, -1] == tok.eos_token_id).all()
    with torch.no_grad():
        short = encode_chunked(pipe, ["olis creature"], 1)
        ref, _ = pipe.encode_prompt("olis creature", "cpu", 1, False)
        assert torch.equal(short, ref)                                  # one chunk = the pipeline's own encoding
        long = encode_chunked(pipe, [LONG], 2)
        first, _ = pipe.encode_prompt(LONG, "cpu", 1, False)            # the pipeline truncates to chunk 1
        assert long.shape == (1, 32, 32) and torch.equal(long[:, :16], first)


def test_job_keys_and_windows():
    s = settings_dict(Generation(steps=25), 512, 512)
    k = job_key("m", "a", 1.0, "p", 1000, s)
    assert k == job_key("m", "a", 1.0, "p", 1000, dict(s))
    others = [job_key("m", "a", 1.0, "p", 1001, s), job_key("m", "a", 0.5, "p", 1000, s),
              job_key("m", "b", 1.0, "p", 1000, s), job_key("m", "a", 1.0, "q", 1000, s),
              job_key("m", "a", 1.0, "p", 1000, settings_dict(Generation(steps=20), 512, 512))]
    assert len({k, *others}) == 6
    assert settings_dict(Generation(batch_size=1), 8, 8) == settings_dict(Generation(batch_size=9), 8, 8)
    assert job_key("m", "", 1.0, "p", 1, s) == job_key("m", "", 0.3, "p", 1, s)   # base: no multiplier
    jobs = [ImageJob(v, "l", "t", i, "p", i, f"{v}{i}") for v, n in (("a", 5), ("b", 3)) for i in range(n)]
    assert [[j.key for j in w] for w in windows(jobs, 2)] == [["a0", "a1"], ["a2", "a3"], ["a4"], ["b0", "b1"], ["b2"]]


def test_multiplier_zero_shares_the_model_images():
    """An adapter at multiplier 0 is its model exactly, so its images are the model's (generated once)."""
    s = settings_dict(Generation(steps=25), 512, 512)
    assert job_key("m", "a", 0.0, "p", 1000, s) == job_key("m", "", 1.0, "p", 1000, s)
    assert job_key("m", "a", 0.0, "p", 1000, s) != job_key("other", "", 1.0, "p", 1000, s)
    assert job_key("m", "a", 1e-3, "p", 1000, s) != job_key("m", "", 1.0, "p", 1000, s)


def test_seeds_per_image_and_cache_files(pipe, tmp_path):
    gen = Generation(steps=2, guidance_scale=3.0, batch_size=3)
    jobs = [ImageJob("base", "l", "trigger", k, p, 1000 + k, f"{k:064x}")
            for k, p in enumerate(["olis creature", "a red circle", LONG])]
    assert generate_jobs(pipe, jobs, gen, tmp_path, size=(32, 32),
                         progress=False) == 3
    imgs = [np.asarray(Image.open(j.path(tmp_path))).astype(int) for j in jobs]
    # image k is the pipeline's output for a generator seeded 1000 + k
    g = torch.Generator().manual_seed(1000)
    with torch.no_grad():
        direct = pipe("olis creature", num_inference_steps=2, guidance_scale=3.0, width=32, height=32, generator=g,
                      eta=0.0, output_type="pil").images[0]
    assert np.abs(np.asarray(direct).astype(int) - imgs[0]).max() <= 1
    # one at a time gives the same images (per-image generators; batch-size independent)
    single = Generation(steps=2, guidance_scale=3.0, batch_size=1)
    generate_jobs(pipe, jobs, single, tmp_path / "one", size=(32, 32), progress=False)
    for j, a in zip(jobs, imgs):
        assert np.abs(np.asarray(Image.open(j.path(tmp_path / "one"))).astype(int) - a).max() <= 1


def test_sdxl_pipeline_generates(tmp_path):
    xl = make_pipeline("sdxl")
    gen = Generation(steps=1, guidance_scale=2.0, sampler="euler")
    jobs = [ImageJob("base", "l", "trigger", 0, "olis creature", 1000, "0" * 64)]
    generate_jobs(xl, jobs, gen, tmp_path, size=(32, 32), progress=False)
    assert Image.open(jobs[0].path(tmp_path)).size == (32, 32)
