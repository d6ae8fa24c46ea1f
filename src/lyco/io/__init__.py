"""Reading and writing adapter files (safetensors, kohya/LyCORIS keys, metadata, hashes)."""
