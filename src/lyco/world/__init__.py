"""The embedded micro-world: a seeded procedural renderer with captions, held-out concepts, the ``lyco-tiny``
base model (``builtin:tiny``, Stable Diffusion architecture) and tiny evaluation backbones.

    from lyco.world import render, concepts, dataset, checks
    img = render.render(render.sample_scene(render.scene_rng(seed=0, index=0)))     # (32, 32, 3) uint8
    dataset.write_dataset("olis", "data/olis", seed=0)                              # kohya folder + prompt sets
    pipe = lyco.world.model.load_pipeline("builtin:tiny")
    checks.concept_score(image, "olis")                                             # how much it shows olis

``lyco.world`` itself imports nothing: import the submodules you use.  ``render``, ``concepts``, ``dataset`` and
``text`` are numpy / Pillow code; ``model`` and ``sampling`` load lyco-tiny with diffusers (its files are found through
:mod:`lyco.builtin`), ``backbones`` and ``checks`` are torch models.  See ``lyco/world/README.md``.
"""
