"""The command line describes itself: every command in ``lyco --help``, every option with help text, no option
listed twice, hints that name command-line flags, and no third-party noise on a normal command."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest
import torch

from lyco.cli import CLI_HINTS, VERBS, cli_message, main
from lyco.errors import FileFormatError
from train_fixtures import child_env


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(verb: str, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser a command builds (caught at parse time, so modules need no parser() function)."""
    def capture(self, *a, **k):
        raise _Captured(self)
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        m.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        try:
            importlib.import_module(VERBS[verb][0]).main(["--help"])
        except _Captured as c:
            return c.parser
    raise AssertionError(f"lyco {verb} did not parse its arguments with argparse")


def walk(parser: argparse.ArgumentParser, path: str):
    """(path, parser) for the parser and every sub-command parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from walk(sub, f"{path} {name}")


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_option_has_help_and_is_listed_once(verb, monkeypatch):
    for path, p in walk(parser_of(verb, monkeypatch), f"lyco {verb}"):
        assert p.prog == path, (p.prog, path)
        shown: dict[str, str] = {}
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            name = "/".join(action.option_strings) or action.dest
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help and action.help.strip(), f"{path}: {name} has no help text"
            for opt in action.option_strings:
                key = opt.replace("_", "-")
                assert key not in shown, f"{path}: {opt} is listed twice (also as {shown[key]})"
                shown[key] = opt


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--verbose" in out
    for verb, (_, text) in VERBS.items():
        assert f"  {verb:<10} {text}" in out
    assert "builtin:tiny" in VERBS["demo"][1] and "toy" in VERBS["demo"][1]


@pytest.mark.parametrize("verb", list(VERBS))
def test_each_command_help_exits_cleanly(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lyco {verb}")


def test_hints_name_command_line_flags(tmp_path, capsys):
    for api, flag in CLI_HINTS.items():
        assert cli_message(FileFormatError(f"x.safetensors: 3 modules unmatched ({api})")).endswith(f"({flag})")
    # a real case: an adapter with one module the model does not have, merged without and with --ignore-unmatched
    from safetensors.torch import save_file

    import lyco.sd
    pipe = lyco.sd.load_pipeline("builtin:tiny", tokenizer=False)
    net = lyco.sd.attach(pipe, algo="lora", dim=2, preset="attn-only", text_encoder=False)
    tensors = {k: v.contiguous() for k, v in net.state_tensors().items()}
    net.detach()
    tensors.update({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
                    "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)})
    adapter = tmp_path / "extra.safetensors"
    save_file(tensors, str(adapter))
    out = tmp_path / "m.safetensors"
    assert main(["merge", "builtin:tiny", str(adapter), "--adapter", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "lora_unet_no_such_layer" in err and "pass --ignore-unmatched to load the rest" in err
    assert "strict=False" not in err and not out.exists()
    assert main(["merge", "builtin:tiny", str(adapter), "--adapter", "-o", str(out), "--ignore-unmatched"]) == 0
    assert out.is_file()


def test_normal_command_is_quiet_and_verbose_is_not(tmp_path, capfd):
    """No third-party warnings or loading bars on a normal command (a fresh process); --verbose shows them."""
    import logging

    import lyco.sd
    pipe = lyco.sd.load_pipeline("builtin:tiny", tokenizer=False)
    adapter = tmp_path / "a.safetensors"
    lyco.sd.attach(pipe, algo="lora", dim=2, preset="attn-only").save(adapter)
    r = subprocess.run([sys.executable, "-m", "lyco", "merge", "builtin:tiny", str(adapter), "-o", str(tmp_path / "m")],
                       env=child_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'm'}"
    for noise in ("[transformers]", "Warning", "warn", "Loading", "it/s", "%|"):
        assert noise not in r.stderr, (noise, r.stderr)
    capfd.readouterr()
    level = logging.getLogger("lyco").level
    try:
        assert main(["--verbose", "merge", "builtin:tiny", str(adapter), "-o", str(tmp_path / "v")]) == 0
    finally:
        logging.getLogger("lyco").setLevel(level)
    assert "Loading pipeline components" in capfd.readouterr().err


def test_missing_tokenizer_advice_is_for_the_command_line(monkeypatch, tmp_path):
    from lyco.errors import MissingTokenizerError
    from lyco.sd.tokenizers import resolve_tokenizer
    monkeypatch.delenv("LYCO_TOKENIZER_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingTokenizerError) as exc:
        resolve_tokenizer("sd1")
    msg = cli_message(exc.value)
    assert "load_single_file" not in msg and "tokenizer=False" not in msg and "=False" not in msg
    assert ("one of two ways:\n  1. environment variable: LYCO_TOKENIZER_PATH=/path/to/folder\n"
            "  2. Hugging Face cache") in msg
