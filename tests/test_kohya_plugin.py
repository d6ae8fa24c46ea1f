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
    net2, sd = kohya.create_network_from_weights(1.0, str(f), fresh.vae, fresh.text_encoder, fresh.unet,
                                                 for_inference=True)
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


# ------------------------------------------------------------------------------------------------------------
# never lose a plug-in run: what cannot be honoured fails before training; resumes are checked module by module


def _trained(tmp_path, algo="lora", dim=4, alpha=2.0, name="w.safetensors", **args):
    """A network as sd-scripts builds it, with non-zero weights, saved; returns (pipe, network, file)."""
    pipe = make_pipeline("sd1")
    n = kohya.create_network(1.0, dim, alpha, None, pipe.text_encoder, pipe.unet, algo=algo, **args)
    n.apply_to(pipe.text_encoder, pipe.unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in n.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    f = tmp_path / name
    n.save_weights(str(f), None, {})
    return pipe, n, f


@pytest.mark.parametrize("fmt,ok", [("safetensors", True), (None, True), ("pt", False), ("ckpt", False)])
def test_save_format_checked_when_the_network_is_created(fmt, ok, tmp_path):
    from types import SimpleNamespace
    pipe = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 1, None, pipe.text_encoder, pipe.unet, algo="lora")
    args = SimpleNamespace(save_model_as=fmt, network_weights=None, dim_from_weights=False)
    if ok:
        n.prepare_network(args)
        return
    with pytest.raises(lyco.ConfigError) as e:
        n.prepare_network(args)
    assert f"--save_model_as {fmt}" in str(e.value) and "use --save_model_as safetensors" in str(e.value)
    n.apply_to(pipe.text_encoder, pipe.unet)
    with pytest.raises(lyco.ConfigError, match="safetensors"):
        n.save_weights(str(tmp_path / f"x.{fmt}"), None, {})
    assert not (tmp_path / f"x.{fmt}").exists()


@pytest.mark.parametrize("arg,needle", [("block_dims", "preset TOML"), ("down_lr_weight", "name_algo_map")])
def test_networks_lora_blockwise_args_say_what_to_use(arg, needle):
    pipe = make_pipeline("sd1")
    with pytest.raises(lyco.ConfigError, match=needle):
        kohya.create_network(1.0, 4, 1, None, pipe.text_encoder, pipe.unet, **{arg: "2,2,2"})


def test_state_dict_has_the_file_keys_once_and_round_trips(tmp_path):
    pipe, n, f = _trained(tmp_path, algo="loha", conv_dim="2")
    file_tensors, _ = lyco.io.files.read_file(f)
    sd = n.state_dict()
    assert sorted(sd) == sorted(file_tensors)  # each tensor once, under its file key (alpha included)
    assert all(torch.equal(sd[k], file_tensors[k]) for k in sd)
    params = list(n.parameters())
    assert len({id(p) for p in params}) == len(params) == sum(len(list(a.parameters()))
                                                              for a in n.net.adapters.values())
    y = generate(pipe)

    # sd-scripts' gen_img.py: create_network_from_weights -> apply_to -> load_state_dict(weights_sd, False)
    fresh = make_pipeline("sd1")
    net2, weights_sd = kohya.create_network_from_weights(1.0, str(f), None, fresh.text_encoder, fresh.unet,
                                                         for_inference=True)
    net2.apply_to(fresh.text_encoder, fresh.unet)
    info = net2.load_state_dict(weights_sd, False)
    assert info.missing_keys == [] and info.unexpected_keys == []
    assert np.allclose(generate(fresh), y, atol=1e-6)

    # a network built from the command line loads the state dict strictly, in place (optimizer references stay)
    other = make_pipeline("sd1")
    net3 = kohya.create_network(1.0, 4, 2.0, None, other.text_encoder, other.unet, algo="loha", conv_dim="2")
    net3.apply_to(other.text_encoder, other.unet)
    before = [id(p) for p in net3.parameters()]
    net3.load_state_dict(sd)
    assert [id(p) for p in net3.parameters()] == before
    assert np.allclose(generate(other), y, atol=1e-6)


def test_state_dict_under_a_wrapper_prefix(tmp_path):
    """accelerate / DDP wrap the network: keys get a prefix, loading goes through the same checks."""
    pipe, n, f = _trained(tmp_path)
    wrapped = torch.nn.ModuleDict({"module": n})
    sd = wrapped.state_dict()
    assert all(k.startswith("module.lora_") for k in sd)
    other = make_pipeline("sd1")
    n2 = kohya.create_network(1.0, 4, 2.0, None, other.text_encoder, other.unet, algo="lora")
    n2.apply_to(other.text_encoder, other.unet)
    torch.nn.ModuleDict({"module": n2}).load_state_dict(sd)
    assert np.allclose(generate(other), generate(pipe), atol=1e-6)
    missing = torch.nn.ModuleDict({"module": n2}).load_state_dict(
        {k: v for k, v in sd.items() if "down_blocks_0" not in k}, strict=False).missing_keys
    assert missing and all(k.startswith("module.lora_unet_down_blocks_0") for k in missing)
    assert any(k.endswith(".lora_down.weight") for k in missing) and any(k.endswith(".alpha") for k in missing)


def test_network_weights_alpha_from_the_file_is_used_and_reported(tmp_path, caplog):
    pipe, _, f = _trained(tmp_path, alpha=2.0)
    y = generate(pipe)
    other = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 8.0, None, other.text_encoder, other.unet, algo="lora")  # --network_alpha 8
    n.apply_to(other.text_encoder, other.unet)
    with caplog.at_level("WARNING", logger="lyco"):
        info = n.load_weights(str(f))
    assert info["loaded"] == len(n.net) and info["alpha_from_file"] == len(n.net)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "file 2 vs command line 8" in msg and "the file's alpha is used" in msg
    assert np.allclose(generate(other), y, atol=1e-6)
    saved = tmp_path / "resaved.safetensors"
    n.save_weights(str(saved), None, {})
    assert all(float(v) == 2.0 for k, v in lyco.io.files.read_file(saved)[0].items() if k.endswith(".alpha"))


@pytest.mark.parametrize("dim,algo,needles", [
    (8, "lora", ["lora_down.weight file (4, 32) vs network (8, 32)", "--dim_from_weights"]),
    (4, "loha", ["the file has lora", "the network loha", "--dim_from_weights"]),
])
def test_resume_mismatch_names_module_shapes_and_fix(tmp_path, dim, algo, needles):
    _, _, f = _trained(tmp_path, dim=4)
    other = make_pipeline("sd1")
    n = kohya.create_network(1.0, dim, 2.0, None, other.text_encoder, other.unet, algo=algo)
    n.apply_to(other.text_encoder, other.unet)
    base = generate(other)
    for load in (lambda: n.load_weights(str(f)), lambda: n.load_state_dict(lyco.io.files.read_file(f)[0])):
        with pytest.raises(lyco.ConfigError) as e:
            load()
        text = str(e.value)
        assert all(s in text for s in needles), text
        assert "lora_te_text_model_encoder_layers_0_" in text
    assert np.array_equal(generate(other), base)  # nothing was copied


def test_resume_with_dim_from_weights_builds_the_files_network(tmp_path):
    pipe, _, f = _trained(tmp_path, algo="lokr", dim=4, factor="4")
    y = generate(pipe)
    other = make_pipeline("sd1")
    n, _ = kohya.create_network_from_weights(1, str(f), None, other.text_encoder, other.unet, algo="loha")
    n.apply_to(other.text_encoder, other.unet)
    assert n.load_weights(str(f))["loaded"] == len(n.net)  # train_network.py loads the file again
    assert {a.algo for a in n.net.adapters.values()} == {"lokr"}
    assert np.allclose(generate(other), y, atol=1e-6)


def test_file_modules_outside_the_network_fail_and_missing_ones_are_reported(tmp_path, caplog):
    _, _, f = _trained(tmp_path)  # full preset: convs included
    other = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 2.0, None, other.text_encoder, other.unet, algo="lora", conv_dim="0")
    n.apply_to(other.text_encoder, other.unet)
    with pytest.raises(lyco.ConfigError, match="would be lost from every file this run saves.*--dim_from_weights"):
        n.load_weights(str(f))
    # the other way round: the file lacks the network's conv modules -> they start from zero, with a warning
    _, _, small = _trained(tmp_path, conv_dim="0", name="small.safetensors")
    third = make_pipeline("sd1")
    n3 = kohya.create_network(1.0, 4, 2.0, None, third.text_encoder, third.unet, algo="lora")
    n3.apply_to(third.text_encoder, third.unet)
    with caplog.at_level("WARNING", logger="lyco"):
        info = n3.load_weights(str(small))
    assert info["missing"] and all("resnets" in m or "samplers" in m or "conv_" in m for m in info["missing"])
    assert "start from their initial values" in caplog.text


def test_unet_only_run_from_a_file_with_text_encoder_modules(tmp_path, caplog):
    """--network_train_unet_only from a full file: the TE modules are reported, not an error."""
    _, _, f = _trained(tmp_path)
    other = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 2.0, None, other.text_encoder, other.unet, algo="lora")
    n.apply_to(other.text_encoder, other.unet, apply_text_encoder=False, apply_unet=True)
    with caplog.at_level("WARNING", logger="lyco"):
        info = n.load_weights(str(f))
    assert info["unexpected"] and all(u.startswith("lora_te_") for u in info["unexpected"])
    assert "a side this run does not train" in caplog.text


def test_default_module_set_is_lycoris_full_with_convs():
    pipe = make_pipeline("sd1")
    n = kohya.create_network(1.0, 4, 1, None, pipe.text_encoder, pipe.unet, algo="lora")
    n.apply_to(pipe.text_encoder, pipe.unet)
    names = n.net.names()
    assert {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1"} <= set(names)
    assert n.config.preset == "full" and n.config.rank_dropout_scale is False
    assert n.net.adapters["lora_unet_conv_in"].rank == 4


def test_accelerate_save_state_and_resume(tmp_path):
    """sd-scripts' --save_state / --resume: accelerate saves the network's state dict and loads it back."""
    from accelerate import Accelerator
    pipe, n, f = _trained(tmp_path, algo="lokr", factor="4")
    y = generate(pipe)
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(n.parameters(), lr=1e-3)
    n, opt = acc.prepare(n, opt)
    acc.save_state(str(tmp_path / "state"))

    other = make_pipeline("sd1")
    n2 = kohya.create_network(1.0, 4, 2.0, None, other.text_encoder, other.unet, algo="lokr", factor="4")
    n2.apply_to(other.text_encoder, other.unet)
    acc2 = Accelerator(cpu=True)
    n2, opt2 = acc2.prepare(n2, torch.optim.AdamW(n2.parameters(), lr=1e-3))
    acc2.load_state(str(tmp_path / "state"))
    assert np.allclose(generate(other), y, atol=1e-6)

    third = make_pipeline("sd1")  # resumed with another rank: a lyco error naming module, shapes and the fix
    n3 = kohya.create_network(1.0, 8, 2.0, None, third.text_encoder, third.unet, algo="lokr", factor="4")
    n3.apply_to(third.text_encoder, third.unet)
    acc3 = Accelerator(cpu=True)
    n3, _ = acc3.prepare(n3, torch.optim.AdamW(n3.parameters(), lr=1e-3))
    with pytest.raises(lyco.ConfigError, match=r"encoder_layers_0_mlp_fc1 \(lokr\): lokr_w2 file absent vs network "
                                               r"\(16, 8\); lokr_w2_a file \(16, 4\).*--dim_from_weights"):
        acc3.load_state(str(tmp_path / "state"))
