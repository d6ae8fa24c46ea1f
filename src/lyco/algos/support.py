"""Which clients load which file features, as data the algorithm classes carry (``AdapterModule.support``).

A *feature* is one thing a module of a file can use (``"lora"``, ``"locon-tucker"``, ``"dora-in"`` ...).  Each
algorithm declares the features its modules can have, how to recognise them in a module's tensors, and one
:class:`Support` row per feature.  ``lyco inspect`` combines them into a verdict per client
(:mod:`lyco.tools.compat`); ``docs/compatibility.md`` prints the whole table.

Where a client is installable in lyco's test environment (lycoris-lora 4.1.3, diffusers, PEFT) every claim is
checked by ``tests/test_compat_claims.py``, which loads a file with each feature in that client's own loader.  The
UI columns (ComfyUI, A1111, Forge, InvokeAI) and sd-scripts' own loader come from the documented support matrix.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: the clients of the support matrix, in display order
CLIENTS = ("ComfyUI", "A1111", "Forge", "InvokeAI", "diffusers", "sd-scripts", "lycoris-lora", "PEFT")
#: clients whose claims the test suite checks by loading files in the client's own loader
TESTED_CLIENTS = ("diffusers", "lycoris-lora", "PEFT")
#: what each client column means (printed by ``lyco inspect`` and the docs)
CLIENT_NOTES = MappingProxyType({
    "diffusers": "pipe.load_lora_weights on the kohya file",
    "sd-scripts": "sd-scripts' own networks.lora loader",
    "lycoris-lora": "lycoris-lora 4.1.3 (create_lycoris_from_weights / lycoris.kohya)",
    "PEFT": "PEFT 0.21 loading the output of `lyco convert --to peft`",
})

EXACT, APPROX, IGNORED, ERROR, UNKNOWN = "exact", "approximate", "ignored", "error", "unknown"
LEVELS = (EXACT, APPROX, IGNORED, ERROR, UNKNOWN)
#: worse levels rank higher; a file's verdict for a client is the worst level over its modules' features
RANK = MappingProxyType({EXACT: 0, APPROX: 1, IGNORED: 2, UNKNOWN: 3, ERROR: 4})
#: the legend of the support matrix: loads and matches / loads, math differs / ignored / error
SYMBOLS = MappingProxyType({"✔": EXACT, "≈": APPROX, "✘": IGNORED, "!": ERROR, "?": UNKNOWN})


@dataclass(frozen=True)
class Support:
    """One row of the support matrix: the level per client and why the non-exact ones are so."""

    levels: Mapping[str, str]
    reason: str = ""
    #: per-client reasons where one sentence for the row would be wrong for some client
    notes: Mapping[str, str] = field(default_factory=dict)

    def level(self, client: str) -> str:
        return self.levels.get(client, UNKNOWN)

    def why(self, client: str) -> str:
        return self.notes.get(client, self.reason)


def row(symbols: str, reason: str = "", **notes: str) -> Support:
    """A row from the matrix's symbols in :data:`CLIENTS` order, e.g. ``row("✔ ✔ ✔ ✔ ! ✘ ✔ ✔", "why")``.

    ``notes`` give per-client reasons, keyed by the client name with ``-`` and spaces as ``_``
    (``lycoris_lora="..."``)."""
    marks = symbols.split()
    if len(marks) != len(CLIENTS) or any(m not in SYMBOLS for m in marks):
        raise ValueError(f"support row needs {len(CLIENTS)} of {' '.join(SYMBOLS)}, got {symbols!r}")
    by_key = {c.replace("-", "_").replace(" ", "_"): c for c in CLIENTS}
    unknown = set(notes) - set(by_key)
    if unknown:
        raise ValueError(f"support notes for unknown clients: {sorted(unknown)}")
    return Support(MappingProxyType(dict(zip(CLIENTS, (SYMBOLS[m] for m in marks)))), reason,
                   MappingProxyType({by_key[k]: v for k, v in notes.items()}))


def symbol(level: str) -> str:
    return {v: k for k, v in SYMBOLS.items()}[level]


#: support of DoRA's ``dora_scale`` (a modifier of lora/loha/lokr modules), by axis and host algorithm
DORA_SUPPORT: Mapping[str, Support] = {
    "dora-in": row("✔ ✔ ✔ ✔ ≈ ✘ ! !", "diffusers drops dora_scale (magnitude lost)",
                   lycoris_lora="lycoris-lora 4.1.3 builds DoRA on the output axis and fails to load input-axis "
                                "dora_scale (convert with `lyco convert --to ui-safe --for lycoris-lora`)",
                   PEFT="PEFT's DoRA magnitude is per output channel; input-axis DoRA has no PEFT equivalent"),
    "dora-in-not-lora": row("✔ ✔ ✔ ! ≈ ✘ ! !", "InvokeAI applies DoRA to LoRA only and raises on LoHa/LoKr + DoRA",
                            lycoris_lora="lycoris-lora 4.1.3 fails to load input-axis dora_scale",
                            PEFT="PEFT has DoRA for LoRA only"),
    "dora-out": row("≈ ≈ ≈ ≈ ≈ ✘ ✔ ✔", "UIs apply output-axis dora_scale with the input-axis convention "
                    "(ComfyUI ≈26%, A1111 ≈36%, InvokeAI ≈82% error); diffusers drops it"),
    "dora-out-not-lora": row("≈ ≈ ≈ ! ≈ ✘ ✔ !", "UIs apply output-axis dora_scale with the input-axis convention; "
                             "InvokeAI raises on LoHa/LoKr + DoRA", PEFT="PEFT has DoRA for LoRA only"),
    "dora-1d": row("! ! ! ! ≈ ✘ ! !", "1-D dora_scale hits a broadcast bug in the UIs",
                   lycoris_lora="lycoris-lora 4.1.3 cannot copy a 1-D dora_scale into its (O, 1) parameter",
                   PEFT="`lyco convert --to peft` exports LoRA DoRA only, and lyco never writes 1-D dora_scale"),
}


@dataclass(frozen=True)
class FileSummary:
    """What ``lyco inspect`` shows about one module of a file."""

    rank: int | None = None
    #: variant tags appended to the algorithm name (``tucker``, ``dora`` ...)
    tags: tuple[str, ...] = ()
    #: a short description of the factor layout (LoKr: the Kronecker factor shapes), or None
    layout: str | None = None
