"""The sd-scripts plug-in, driven the way train_network.py drives a --network_module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lyco
from lyco import kohya
from sd_tiny import generate, make_pipeline


def _unet_loss(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(2, 4, 8, 8, generator=g)
    ids = torch.randint(0, 100, (2, 16), generator=g)
    cond = pipe.text_encoder(ids)[0]
    t = torch.randint(0, 1000, (2,), generator=g)
    return pipe.unet(lat, t, encoder_hidden_states=cond).sample.square().mean()


def test_train_network_flow(tmp_path):
    pipe = make_pipeline("sd1")
    base = generate(pipe)
    network = kohya.create_network(1.0, 4, 2, pipe.vae, pipe.text_encoder, pipe.unet, neuron_dropout=None,
                                   algo="loha", conv_dim="4", conv_alpha="2", use_tucker="false", dora_wd="False",
                                   loraplus_lr_ratio="4")
    network.apply_to(pipe.text_encoder, pipe.unet, True, True)
    assert network.net is not None and len(network.net) > 0
    n_params = sum(p.numel() for p in network.parameters())
    assert n_params == sum(p.numel() for p in network.net.parameters())  # the models are not part of the network
    params, desc = network.prepare_optimizer_params(1e-4, 1e-3, 1e-3)
    assert sorted(desc) == ["te", "te plus", "unet", "unet plus"]
    assert {g["lr"] for g in params} == {1e-4, 4e-4, 1e-3, 4e-3}
    opt = torch.optim.AdamW(params)
    network.prepare_grad_etc(pipe.text_encoder, pipe.unet)
    network.on_epoch_start(pipe.text_encoder, pipe.unet)
    for step in range(2):
        loss = _unet_loss(pipe, step)
        loss.backward()
        opt.step()
        opt.zero_grad()
    scaled, mean, mx = network.apply_max_norm_regularization(1e-3, "cpu")
    assert scaled > 0 and mx <= 1e-3 + 1e-9
    trained = generate(pipe)
    assert np.abs(trained - base).max() > 0
    f = tmp_path / "n.safetensors"
    network.save_weights(str(f), torch.float32, {"ss_network_dim": "4", "ss_network_module": "lyco.kohya"})
    meta = lyco.io.files.read_metadata(f)
    assert meta["ss_network_module"] == "lyco.kohya" and "sshs_model_hash" in meta

    fresh = make_pipeline("sd1")
    net2, sd = kohya.create_network_from_weights(1.0, str(f), fresh.vae, fresh.text_encoder, fresh.unet, for_inference=True)
    net2.apply_to(fresh.text_encoder, fresh.unet)
    assert np.allclose(generate(fresh), trained, atol=1e-5)


def test_load_weights_before_apply_to_and_merge_to(tmp_path):
    pipe = make_pipeline("sd1")
    network = kohya.create_network(1.0, 4, 4, None, pipe.text_encoder, pipe.unet, algo="lora")
    network.apply_to(pipe.text_encoder, pipe.unet)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    f = tmp_path / "w.safetensors"
    network.save_weights(str(f), None, {})
    with_adapter_half = None
    network.set_multiplier(0.5)
    with_adapter_half = generate(pipe)
    network.net.detach()

    a = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 4, None, a.text_encoder, a.unet, algo="lora")
    n.load_weights(str(f))  # staged: sd-scripts may load before apply_to
    n.apply_to(a.text_encoder, a.unet)
    n.set_multiplier(0.5)
    assert np.allclose(generate(a), with_adapter_half, atol=1e-5)
    n.net.detach()
    n.load_weights(str(f))  # staged again (no network attached) ...
    n.multiplier = 0.5
    n.merge_to(a.text_encoder, a.unet, None, torch.float32, "cpu")  # --base_weights honours the multiplier
    assert np.allclose(generate(a), with_adapter_half, atol=1e-5)


def test_load_weights_after_apply_to(tmp_path):
    pipe = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 4, None, pipe.text_encoder, pipe.unet, algo="lokr", factor="4")
    n.apply_to(pipe.text_encoder, pipe.unet)
    with torch.no_grad():
        for p in n.parameters():
            p.add_(0.05 * torch.randn_like(p))
    f = tmp_path / "w.safetensors"
    n.save_weights(str(f), None, {})
    y = generate(pipe)
    with torch.no_grad():
        for p in n.parameters():
            p.zero_()
    info = n.load_weights(str(f))
    assert info["loaded"] == len(n.net) and not info["unexpected"]
    assert np.allclose(generate(pipe), y, atol=1e-6)


def test_sdxl_text_encoder_list_prefixes():
    pipe = make_pipeline("sdxl")
    n = kohya.create_network(1.0, 4, 1, None, [pipe.text_encoder, pipe.text_encoder_2], pipe.unet, algo="lora")
    n.apply_to([pipe.text_encoder, pipe.text_encoder_2], pipe.unet)
    prefixes = {s.root.prefix for s in n.net._sites.values()}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    params, desc = n.prepare_optimizer_params([1e-4, 2e-4], 1e-3, 1e-3)
    assert dict(zip(desc, [g["lr"] for g in params])) == {"unet": 1e-3, "te": 1e-4, "te2": 2e-4}
    params, desc = n.prepare_optimizer_params(0, 1e-3, 1e-3)
    assert desc == ["unet"]


@pytest.mark.parametrize("args,needle", [
    ({"decompose_both": "False"}, None),
    ({"dora_wd": "yes"}, "true/false/1/0"),
    ({"facter": "8"}, "did you mean 'factor'"),
    ({"conv_dim": "4.5"}, "integer"),
    ({"algo": "lohaa"}, "loha"),
])
def test_network_args_parsing(args, needle):
    pipe = make_pipeline("sd1")
    if needle is None:
        n = kohya.create_network(1.0, 4, 1, None, pipe.text_encoder, pipe.unet, algo="lokr", **args)
        assert n.config.decompose_both is False
        return
    with pytest.raises(lyco.ConfigError) as e:
        kohya.create_network(1.0, 4, 1, None, pipe.text_encoder, pipe.unet, **args)
    assert needle in str(e.value)
