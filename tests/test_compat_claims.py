"""Every compatibility claim about a client installed in the test environment is checked in that client's loader.

For each file feature of the support matrix there is an example file (a tiny SD1 pipeline's adapter).  It is loaded
in lycoris-lora 4.1.3 (``lycoris.kohya.create_network_from_weights``, as sd-scripts does), in diffusers
(``pipe.load_lora_weights``) and in PEFT (the ``lyco convert --to peft`` output through ``inject_adapter_in_model`` +
``set_peft_model_state_dict``).  The measured outcome (exact / approximate / ignored / error, against lyco's own
forward) must be the verdict ``lyco inspect`` gives for the file.  A feature without an example fails the suite.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import lyco
import lyco.sd
from lyco.algos.support import APPROX, ERROR, EXACT, IGNORED, TESTED_CLIENTS
from lyco.tools import compat
from lyco.tools import convert as conv
from sd_tiny import make_pipeline

pytest.importorskip("lycoris")
pytest.importorskip("peft")
logging.getLogger("LyCORIS").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Example:
    options: dict
    unet: bool = True
    text_encoder: bool = True
    edit: str = ""  # "dora-1d": dora_scale written 1-D; "unknown": an extra module no algorithm knows
    features: tuple[str, ...] = field(default=())


EXAMPLES = {
    "lora": Example(dict(algo="lora", dim=4, alpha=2.0, preset="kohya-conv")),
    "locon-tucker": Example(dict(algo="lora", dim=4, alpha=2.0, preset="kohya-conv", use_tucker=True)),
    "loha": Example(dict(algo="loha", dim=2, alpha=1.0, preset="kohya-conv")),
    "loha-tucker": Example(dict(algo="loha", dim=2, alpha=1.0, preset="kohya-conv", use_tucker=True)),
    "lokr": Example(dict(algo="lokr", dim=2, alpha=1.0)),
    "lokr-full": Example(dict(algo="lokr", dim=4, full_matrix=True)),
    "lokr-tucker-conv": Example(dict(algo="lokr", dim=1, factor=4, use_tucker=True, preset="kohya-conv")),
    "lokr-unbalanced": Example(dict(algo="lokr", dim=1, factor=8, unbalanced_factorization=True)),
    "lokr-factor": Example(dict(algo="lokr", dim=2, factor=2)),
    "lokr-decomposed-w1": Example(dict(algo="lokr", dim=1, factor=8, decompose_both=True)),
    "dora-in": Example(dict(algo="lora", dim=4, dora_wd=True)),
    "dora-in-not-lora": Example(dict(algo="loha", dim=2, dora_wd=True)),
    "dora-out": Example(dict(algo="lora", dim=4, dora_wd=True, wd_on_output=True)),
    "dora-out-not-lora": Example(dict(algo="lokr", dim=2, dora_wd=True, wd_on_output=True)),
    "dora-1d": Example(dict(algo="lora", dim=4, dora_wd=True, wd_on_output=True), text_encoder=False, edit="dora-1d"),
    "diag-oft": Example(dict(algo="diag-oft", dim=4)),
    "diag-oft-constraint": Example(dict(algo="diag-oft", dim=4, constraint=0.05)),
    "diag-oft-rescale": Example(dict(algo="diag-oft", dim=4, rescaled=True)),
    "boft": Example(dict(algo="boft", dim=8)),
    "boft-rescale": Example(dict(algo="boft", dim=8, rescaled=True)),
    "glora": Example(dict(algo="glora", dim=2, alpha=1.0)),
    "ia3": Example(dict(algo="ia3", preset="ia3")),
    "full": Example(dict(algo="full")),
    "norm": Example(dict(target_modules=["GroupNorm"], train_norm=True), text_encoder=False),
    "norm-te": Example(dict(target_modules=["LayerNorm"], train_norm=True), unet=False),
    "unknown-keys": Example(dict(algo="lora", dim=4), edit="unknown"),
}
FILE_ONLY = {"sdxl-diffusers-names"}  # checked by test_sdxl_diffusers_names_in_lycoris below


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))


@pytest.fixture(scope="module")
def base_pipe():
    return make_pipeline("sd1")


def _inputs(pipe):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    ids = torch.randint(0, 400, (1, 12), generator=g)
    return latents, ids


def _outputs(unet, te, pipe) -> torch.Tensor:
    latents, ids = _inputs(pipe)
    with torch.no_grad():
        h = te(ids)[0]
        eps = unet(latents, 10, encoder_hidden_states=h).sample
    return torch.cat([h.flatten(), eps.flatten()])


def _make_file(pipe, ex: Example, path) -> dict[str, torch.Tensor]:
    net = lyco.sd.attach(pipe, seed=0, unet=ex.unet, text_encoder=ex.text_encoder, **ex.options)
    _randomize(net)
    tensors = net.state_tensors()
    net.detach()
    if ex.edit == "dora-1d":
        tensors = {k: (v.reshape(-1) if k.endswith("dora_scale") else v) for k, v in tensors.items()}
    if ex.edit == "unknown":
        tensors["lora_unet_conv_in.weird_part"] = torch.ones(3)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return tensors


def _classify(y, y_ref, y_base, partial: bool) -> str:
    effect = float((y_ref - y_base).abs().max())
    assert effect > 1e-4, "the example adapter must change the outputs"
    if float((y - y_ref).abs().max()) <= 1e-3 * effect:
        return IGNORED if partial else EXACT
    if float((y - y_base).abs().max()) <= 1e-3 * effect:
        return IGNORED
    return APPROX


def _lycoris_load(model: nn.Module, prefix: str, weights: dict[str, torch.Tensor]):
    """lycoris-lora's loader (the module detection and construction lycoris.kohya uses) for one model part.

    ``lycoris.kohya.create_network_from_weights`` itself first builds a default network, which fails on SD1 UNets
    with a duplicated module name; its per-module code is the same as ``create_lycoris_from_weights``'s."""
    from lycoris import LycorisNetwork, create_lycoris_from_weights
    old = LycorisNetwork.LORA_PREFIX
    LycorisNetwork.LORA_PREFIX = prefix
    try:
        net, _ = create_lycoris_from_weights(1.0, "", model, weights_sd=weights)
    finally:
        LycorisNetwork.LORA_PREFIX = old
    net.apply_to()
    return net


def _in_lycoris(pipe, path):
    p = copy.deepcopy(pipe)
    sd = load_file(str(path))
    te = p.text_encoder
    if not hasattr(te, "text_model"):  # transformers 5 dropped the wrapper; sd-scripts' transformers 4 has it
        te = nn.Module()
        te.text_model = p.text_encoder
    for prefix, model in (("lora_unet", p.unet), ("lora_te", te)):
        part = {k: v for k, v in sd.items() if k.startswith(prefix + "_")}
        if part:
            _lycoris_load(model, prefix, part)
    return p


def _in_diffusers(pipe, path):
    p = copy.deepcopy(pipe)
    p.load_lora_weights(str(path))
    return p


def _in_peft(pipe, path):
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    p = copy.deepcopy(pipe)
    parts = conv.kohya_to_peft(load_file(str(path)), lyco.sd.roots(p))
    for d, (sd, cfg) in parts.items():
        cls = {"LORA": LoraConfig, "LOHA": LoHaConfig, "LOKR": LoKrConfig}[cfg["peft_type"]]
        pc = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__ and k != "peft_type"})
        model = inject_adapter_in_model(pc, getattr(p, d))
        res = set_peft_model_state_dict(model, {k[len("base_model.model."):]: v for k, v in sd.items()})
        if res.unexpected_keys:
            raise ValueError(f"unexpected keys {res.unexpected_keys[:3]}")
    return p


LOADERS = {"lycoris-lora": _in_lycoris, "diffusers": _in_diffusers, "PEFT": _in_peft}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_claims_hold_in_installed_clients(example, base_pipe, tmp_path):
    ex = EXAMPLES[example]
    path = tmp_path / f"{example}.safetensors"
    tensors = _make_file(base_pipe, ex, path)
    claimed = compat.verdicts(compat.group(tensors))
    ref = copy.deepcopy(base_pipe)
    y_base = _outputs(ref.unet, ref.text_encoder, ref)
    lyco.sd.load(ref, path, strict=ex.edit != "unknown")
    y_ref = _outputs(ref.unet, ref.text_encoder, ref)
    measured = {}
    for client in TESTED_CLIENTS:
        try:
            p = LOADERS[client](base_pipe, path)
        except Exception:  # noqa: BLE001 - any failure of the client's loader is what "error" claims
            measured[client] = ERROR
            continue
        measured[client] = _classify(_outputs(p.unet, p.text_encoder, p), y_ref, y_base, ex.edit == "unknown")
    expected = {c: claimed[c].level for c in TESTED_CLIENTS}
    assert measured == expected, {c: claimed[c].reason for c in TESTED_CLIENTS}


def test_every_feature_has_an_example(base_pipe, tmp_path):
    seen = set(FILE_ONLY)
    for name, ex in EXAMPLES.items():
        tensors = _make_file(base_pipe, ex, tmp_path / f"{name}.safetensors")
        for n, parts in compat.group(tensors).items():
            seen.update(compat.features(n, parts))
        assert name in seen or name in ("loha-tucker", "lokr-full"), f"example {name!r} does not show its feature"
    missing = set(compat.matrix()) - seen
    assert not missing, f"support-matrix features without an example file here: {sorted(missing)}"


def test_sdxl_diffusers_names_in_lycoris():
    """lycoris names modules after the model's own paths, and sd-scripts' SDXL UNet has the LDM layout: files with
    diffusers-layout SDXL names match no module there."""
    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Module() for _ in range(5)])
    unet.input_blocks[4].add_module("1", nn.Module())
    getattr(unet.input_blocks[4], "1").proj_in = nn.Linear(8, 8)
    for name in ("lora_unet_input_blocks_4_1_proj_in", "lora_unet_down_blocks_1_attentions_0_proj_in"):
        sd = {f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": torch.ones(8, 2),
              f"{name}.alpha": torch.tensor(2.0)}
        net = _lycoris_load(copy.deepcopy(unet), "lora_unet", sd)
        assert len(net.loras) == (1 if "input_blocks" in name else 0)
    assert compat.matrix()["sdxl-diffusers-names"].level("lycoris-lora") == IGNORED


@pytest.mark.parametrize("example", ["dora-in", "dora-in-not-lora", "ia3", "diag-oft-rescale", "lokr-unbalanced",
                                     "lokr-tucker-conv"])
def test_rewrite_for_lycoris_loads_there_exactly(example, base_pipe, tmp_path):
    ex = EXAMPLES[example]
    src = tmp_path / "in.safetensors"
    tensors = _make_file(base_pipe, ex, src)
    assert compat.verdicts(compat.group(tensors))["lycoris-lora"].level == ERROR
    ref = copy.deepcopy(base_pipe)
    y_base = _outputs(ref.unet, ref.text_encoder, ref)
    lyco.sd.load(ref, src)
    y_ref = _outputs(ref.unet, ref.text_encoder, ref)
    roots = None if example == "lokr-tucker-conv" else lyco.sd.roots(base_pipe)  # lokr_t2 needs no base model
    out, notes = compat.rewrite_for(tensors, "lycoris", roots)
    assert notes and compat.verdicts(compat.group(out))["lycoris-lora"].level == EXACT
    dst = tmp_path / "out.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst))
    p = _in_lycoris(base_pipe, dst)
    assert _classify(_outputs(p.unet, p.text_encoder, p), y_ref, y_base, False) == EXACT


def test_convert_cli_for_lycoris(base_pipe, tmp_path, capsys):
    from lyco.cli import main
    src = tmp_path / "in.safetensors"
    _make_file(base_pipe, EXAMPLES["lokr-tucker-conv"], src)
    assert main(["convert", str(src), "-o", str(tmp_path / "out.safetensors"), "--to", "ui-safe", "--for",
                 "lycoris"]) == 0
    assert "rewritten exactly from the file" in capsys.readouterr().out
    assert compat.verdicts(compat.group(load_file(str(tmp_path / "out.safetensors"))))["lycoris-lora"].level == EXACT
    dora = tmp_path / "dora.safetensors"
    _make_file(base_pipe, EXAMPLES["dora-in"], dora)
    assert main(["convert", str(dora), "-o", str(tmp_path / "o2.safetensors"), "--to", "ui-safe", "--for",
                 "lycoris"]) == 1
    assert "pass --base" in capsys.readouterr().err


def test_markdown_table_is_the_documented_one():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "compatibility.md").read_text()
    assert compat.markdown_table() in doc, "docs/compatibility.md is out of date: paste compat.markdown_table()"
