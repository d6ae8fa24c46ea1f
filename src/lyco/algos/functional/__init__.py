"""Pure tensor math of every algorithm: factors -> ΔW, factorised δ(x), norms.  No nn.Module here.

Every function takes plain tensors plus a :class:`~lyco.algos.geometry.Geometry` where the layer's op matters,
and returns the *raw* reconstruction (without the scale s = alpha/rank, the learned scalar or the multiplier);
callers apply those exactly once.
"""
