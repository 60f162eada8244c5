"""Model kinds: what each member of the cast provides, in one registry (torchtitan's `TrainSpec`, for Movie Gen).

    kind = kind_of(cfg)        # the recipe's `kind`, or the one its data section implies
    kind.check(cfg)            # its recipe checks (load_config runs them)
    kind.evaluate(args, cfg)   # what `tools/evaluate.py` does for it

A kind is one module here (t2v, upsample, edit, personalize, audio) that builds a `Kind` and `register`s it; a
recipe says `kind: edit`. A recipe or export without `kind` (written before kinds) is the kind whose optional data
section (data.audio / data.upsample / data.edit / data.reference) it sets, t2v when it sets none.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.config import DataConfig

if TYPE_CHECKING:
    from megatron_moviegen.recipes import MovieGenConfig

# The kind with no data section of its own: a recipe built on a t2v recipe by adding a section (`base: tiny` plus
# data.edit) is that section's kind without restating `kind`.
BASE_KIND = "t2v"


@dataclass(frozen=True)
class Kind:
    """What one kind of model provides. `section`: the optional `data.<section>` that marks it (None: it reads no
    data section of its own); `check(cfg)` raises ConfigError for a recipe this kind cannot train;
    `evaluate(args, cfg)` runs the evaluation command's work (a dict report); `evaluate_with`: the evaluation's
    autoencoder flag; `sampled_by`: the command that samples an export of it; `generate_input`: the generate flag
    that gives its input (None: text alone)."""

    name: str
    summary: str
    section: Optional[str]
    check: Callable[["MovieGenConfig"], None]
    evaluate: Callable[[argparse.Namespace, "MovieGenConfig"], dict]
    evaluate_with: str = "--tae"
    sampled_by: str = "generate"
    generate_input: Optional[str] = None


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add `kind` to the registry and return it. A second kind of one name, or marked by one data section, and a
    section DataConfig does not have are refused."""
    if kind.name in _KINDS:
        raise ValueError(f"kind {kind.name!r} is already registered ({_KINDS[kind.name].summary})")
    if kind.section is not None and kind.section not in {f.name for f in fields(DataConfig)}:
        raise ValueError(f"kind {kind.name!r}: section got {kind.section!r}, need a field of the data config")
    marked = [k.name for k in _KINDS.values() if kind.section is not None and k.section == kind.section]
    if marked:
        raise ValueError(f"kind {kind.name!r}: data.{kind.section} already marks kind {marked[0]!r}")
    _KINDS[kind.name] = kind
    return kind


def available() -> list[str]:
    return sorted(_KINDS)


def get(name: str) -> Kind:
    """The registered kind `name`; a mistyped name is refused with the nearest names."""
    if name in _KINDS:
        return _KINDS[name]
    close = difflib.get_close_matches(name, _KINDS, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"kind: got {name!r}, need one of {available()}{hint}")


def infer(data) -> Kind:
    """The kind a data section implies, as before recipes said their kind: the first registered kind whose section
    is set (audio, upsample, edit, personalize: a test recipe may set data.edit and data.reference together and is
    then checked as edit, with the reference), else t2v."""
    for kind in _KINDS.values():
        if kind.section is not None and getattr(data, kind.section, None) is not None:
            return kind
    return _KINDS[BASE_KIND]


def kind_of(cfg: "MovieGenConfig") -> Kind:
    """`cfg`'s kind: its `kind` field, or inferred from its data section when unset. A declared kind that its data
    section contradicts (its own section unset, or another kind's set) is refused naming both; a declared t2v with
    a section set is that section's kind (`BASE_KIND`)."""
    inferred = infer(cfg.data)
    if cfg.kind is None:
        return inferred
    declared = get(cfg.kind)
    if declared is inferred or (declared.section is None and inferred.section is None):
        return declared
    if declared.name == BASE_KIND:
        return inferred
    if declared.section is not None and getattr(cfg.data, declared.section, None) is None:
        also = f" (data.{inferred.section} is)" if inferred.section else ""
        raise ConfigError(f"kind: {declared.name}, but data.{declared.section} is not set{also}: set kind: "
                          f"{inferred.name}, or data.{declared.section}")
    raise ConfigError(f"kind: {declared.name}, but data.{inferred.section} is set, which makes it a recipe of kind "
                      f"{inferred.name}: set kind: {inferred.name}, or leave out data.{inferred.section}")


# Each registers itself; this order is `infer`'s (video conditions that combine: upsample or edit before reference).
from megatron_moviegen.kinds import audio  # noqa: E402,F401
from megatron_moviegen.kinds import upsample  # noqa: E402,F401
from megatron_moviegen.kinds import edit  # noqa: E402,F401
from megatron_moviegen.kinds import personalize  # noqa: E402,F401
from megatron_moviegen.kinds import t2v  # noqa: E402,F401
