"""Autotuned kernels: the configs they chose, recorded with goldens and replayed against them.

A `triton.autotune` kernel times its configs on the first call with each key (shape values and
dtypes) and keeps the fastest. A config that changes a reduction's order (num_warps, a block
size) changes the bits, and which config is fastest is a matter of timing: another machine with
the same card, or an emptied Triton cache, may choose another, and the bits of unchanged code
change (flash-linear-attention's l2norm kernel tunes num_warps and its block of rows).

So a golden store records, beside the goldens, every choice the writing run's autotuners made
(`choices`, in the manifest under "autotune"), and a run that compares with the store, or adds
to it, first puts those choices back into the autotuners' caches (`replay`): a key the store
knows is not tuned again, and its config is the one the goldens were made with. Keys the store
does not know are tuned on this machine as usual, and the report names them (their cases' bits
depend on this machine's timing). Autotuners are found by walking the implementation's package
in sys.modules (also under a `triton.heuristics` wrapper); a kernel with a single config has
nothing to choose and is left out.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from gdn_verify.variants import unwrap

AUTOTUNE_KEY = "autotune"  # the manifest's key


def _autotuner_class():
    from triton.runtime.autotuner import Autotuner

    return Autotuner


def implementation_package(fn) -> str | None:
    """The top-level package an implementation's function comes from (where its kernels live)."""
    module = getattr(fn, "__module__", None)
    return module.partition(".")[0] if module else None


def autotuners(package: str | None) -> dict[str, object]:
    """'module.function' (where the kernel is defined) -> each triton.autotune kernel with more
    than one config found in the modules of `package` imported so far."""
    if not package:
        return {}
    try:
        kind = _autotuner_class()
    except ImportError:
        return {}
    found = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == package or module_name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            # An autotuner under `triton.heuristics` (flash-linear-attention's chunk kernels) is
            # the heuristics wrapper's `.fn`.
            tuner = unwrap(value, lambda v: isinstance(v, kind))
            if tuner is not None and len(tuner.configs) > 1:
                # Named where it is defined: a kernel imported into other modules is one kernel.
                fn = tuner.base_fn
                found.setdefault(f"{fn.__module__}.{fn.__qualname__}", tuner)
    return dict(sorted(found.items()))


def config_json(config) -> dict:
    """What a triton.Config launches with, as JSON."""
    return {"kwargs": {k: v for k, v in sorted(config.kwargs.items())}, "num_warps": config.num_warps,
            "num_stages": config.num_stages, "num_ctas": getattr(config, "num_ctas", 1),
            "maxnreg": getattr(config, "maxnreg", None)}


def key_text(key: tuple) -> str:
    """An autotune key (a tuple of ints, strings, ...) as the text the manifest stores (anything
    else as its str: such a key then never matches on replay, and is tuned as if unrecorded)."""
    return json.dumps(list(key), separators=(",", ":"), default=str)


def choices(tuners: dict[str, object]) -> dict[str, dict[str, dict]]:
    """kernel -> key text -> chosen config, for every key the autotuners have settled."""
    out = {}
    for name, tuner in tuners.items():
        chosen = {key_text(key): config_json(config) for key, config in tuner.cache.items()}
        if chosen:
            out[name] = dict(sorted(chosen.items()))
    return out


def merged(old: dict | None, new: dict) -> dict:
    """The store's choices after a writer: the old ones, plus the keys this writer settled that
    the store did not record (a writer replays the old ones first, so shared keys agree unless a
    recorded config could not be replayed; the stored goldens were made with the old one)."""
    out = {name: dict(entries) for name, entries in (old or {}).items()}
    for name, entries in new.items():
        for key, config in entries.items():
            out.setdefault(name, {}).setdefault(key, config)
    return {name: dict(sorted(entries.items())) for name, entries in sorted(out.items())}


def conflicts(old: dict | None, new: dict) -> list[str]:
    """The keys a writer settled otherwise than the store records: shards that started on a store
    without the key, tuned side by side and chose differently (the record keeps the first)."""
    return [f"{name} {key}: recorded {(old or {})[name][key]}, this run {config}"
            for name, entries in sorted(new.items()) for key, config in sorted(entries.items())
            if key in (old or {}).get(name, {}) and old[name][key] != config]


@dataclass
class Replay:
    """What `replay` put back: choices replayed, and those it could not (kernel not found in this
    process, or the recorded config no longer among the kernel's configs)."""

    recorded: int = 0
    replayed: int = 0
    not_replayed: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"recorded": self.recorded, "replayed": self.replayed, "not_replayed": self.not_replayed}


def replay(tuners: dict[str, object], recorded: dict | None) -> Replay:
    """Put the recorded choices into the autotuners' caches (keys already settled in this
    process are overwritten: the store's choice is the one its goldens were made with)."""
    result = Replay()
    for name, entries in (recorded or {}).items():
        tuner = tuners.get(name)
        for text, wanted in entries.items():
            result.recorded += 1
            match = None if tuner is None else next((c for c in tuner.configs if config_json(c) == wanted), None)
            if match is None:
                why = "kernel not found" if tuner is None else "config no longer among the kernel's configs"
                result.not_replayed.append(f"{name} {text}: {why}")
                continue
            tuner.cache[tuple(json.loads(text))] = match
            result.replayed += 1
    return result


def tuned_here(tuners: dict[str, object], recorded: dict | None) -> dict[str, dict[str, dict]]:
    """The choices this process made for keys the store does not record."""
    return {name: new for name, entries in choices(tuners).items()
            if (new := {k: v for k, v in entries.items() if k not in (recorded or {}).get(name, {})})}


def describe(summary: dict | None) -> str | None:
    """A run's autotune summary (RunGoldens: choices replayed from the store, keys tuned here)
    in words, naming the keys whose cases' bits depend on this machine's timing; None where no
    autotuned kernel took part."""
    a = summary or {}
    here = a.get("tuned_here") or []
    if not (a.get("recorded") or here):
        return None
    text = (f"autotuned kernels: {a.get('replayed', 0)} of {a.get('recorded', 0)} choices recorded with the "
            "goldens replayed")
    if a.get("not_replayed"):
        text += f" ({len(a['not_replayed'])} not: {'; '.join(a['not_replayed'][:3])})"
    if here:
        keys = "; ".join(here[:3]) + (" ..." if len(here) > 3 else "")
        text += (f"; {len(here)} key{'s' if len(here) != 1 else ''} tuned on this machine, so the bits of the "
                 f"cases that use them depend on this machine's timing ({keys})")
    return text
