"""File I/O: adapter files (:mod:`~lyco.io.files`: safetensors, metadata, hashes), model checkpoints
(:mod:`~lyco.io.checkpoint`), images (:mod:`~lyco.io.images`) and atomic writes for everything
(:mod:`~lyco.io.atomic`)."""
