"""Drafters from the short text specs every command takes (``--drafter``, ``--drafters``).

A spec is one of:

* ``name``: a registered drafter. Learned heads (classes with ``from_pretrained``) load from
  ``head_dir/<name>``; other drafters are built from their constructor, which may only ask for
  ``target`` and ``vocab_size``.
* ``name:key=value:key=value``: constructor options (``ngram:smoothing=1``), each parsed by the
  type of the parameter's default.
* ``label=folder``: whatever head ``folder`` holds (an ablation run, say), named ``label`` in results.
* ``a+b``: one tree from several drafters under one budget (``CompositeDrafter``).

``make_drafter`` raises ``DrafterUnavailable`` (a ``ValueError``) with the reason when a spec cannot
run here; a caller that wants to skip such a drafter (the bench) catches it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

from jetspec.core.interfaces import DRAFTERS, Drafter
from jetspec.core.loading import DEFAULT_HEAD_DIR
from jetspec.drafters.head_format import read_config


class DrafterUnavailable(ValueError):
    """A drafter spec that cannot run here: unknown name, bad option, missing or damaged head."""


def make_drafter(spec: str, model, head_dir: Optional[Path] = None, subdir: Optional[str] = None) -> Drafter:
    """The drafter a spec names (module docstring), for the Hugging Face target ``model``.

    Args:
        spec: the drafter spec.
        model: the target; its output vocabulary sizes non-learned drafters.
        head_dir: folder with trained heads in ``<head_dir>/<name>`` (default: the shipped heads).
        subdir: load the head from ``head_dir/subdir`` instead of ``head_dir/name``.

    Raises:
        DrafterUnavailable: with the reason the spec cannot run here.
    """
    head_dir = DEFAULT_HEAD_DIR if head_dir is None else Path(head_dir)
    if "+" in spec:
        from jetspec.drafters.composite import CompositeDrafter

        members = []
        for part in spec.split("+"):
            try:
                members.append(make_drafter(part, model, head_dir))
            except DrafterUnavailable as err:
                raise DrafterUnavailable(f"member '{part}': {err}") from err
        return CompositeDrafter(members)
    if ":" in spec and spec.split(":", 1)[0] in DRAFTERS:
        base, *opts = spec.split(":")
        try:
            options = dict(o.split("=", 1) for o in opts)
        except ValueError:
            raise DrafterUnavailable(f"options are key=value after ':' (e.g. ngram:smoothing=1), "
                                     f"got '{spec}'") from None
        return _build(DRAFTERS[base], model, options)
    if "=" in spec:
        return _saved_head(spec, model)
    if spec not in DRAFTERS:
        raise DrafterUnavailable(f"not a registered drafter (known: {', '.join(sorted(DRAFTERS))})")
    cls = DRAFTERS[spec]
    if not hasattr(cls, "from_pretrained"):
        return _build(cls, model, {})
    folder = head_dir / (subdir or spec)
    if not folder.is_dir():
        raise DrafterUnavailable(f"no trained head at {folder}")
    try:
        return cls.from_pretrained(folder, target=model)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise DrafterUnavailable(f"could not load {folder}: {err}") from err


def _saved_head(spec: str, model) -> Drafter:
    """``label=folder``: the head saved in ``folder``, of whatever registered kind it declares."""
    label, folder = spec.split("=", 1)
    if not (Path(folder) / "config.json").is_file():
        raise DrafterUnavailable(f"{label}: no saved head at {folder}")
    try:
        kind = read_config(folder).get("head")
    except (OSError, ValueError) as err:
        raise DrafterUnavailable(f"{label}: {err}") from err
    if kind not in DRAFTERS or not hasattr(DRAFTERS[kind], "from_pretrained"):
        raise DrafterUnavailable(f"{label}: {folder} holds no loadable head ('{kind}')")
    return make_drafter(kind, model, Path(folder).parent, Path(folder).name)


def _build(cls, model, options: dict[str, str]) -> Drafter:
    """A non-learned drafter from its constructor: target / vocab_size supplied, options parsed by
    the type of each parameter's default."""
    supplied = {"target": model, "vocab_size": model.get_output_embeddings().weight.shape[0]}
    params = dict(list(inspect.signature(cls.__init__).parameters.items())[1:])
    unknown = set(options) - set(params)
    if unknown:
        raise DrafterUnavailable(f"{cls.__name__} has no option(s) {sorted(unknown)}")
    kwargs = {}
    for pname, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in options:
            kind = type(p.default) if p.default not in (p.empty, None) else str
            try:
                kwargs[pname] = (options[pname].lower() in ("1", "true", "yes")) if kind is bool \
                    else kind(options[pname])
            except ValueError:
                raise DrafterUnavailable(f"option {pname}={options[pname]!r} is not a {kind.__name__}") from None
        elif pname in supplied:
            kwargs[pname] = supplied[pname]
        elif p.default is p.empty:
            raise DrafterUnavailable(f"needs a '{pname}' argument the command line cannot supply; "
                                     "use the Python API")
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise DrafterUnavailable(str(err)) from err


def spec_label(spec: str) -> str:
    """How a drafter spec is named in results: 'label=folder' -> label; options stay visible."""
    return "+".join(part if ":" in part else part.split("=", 1)[0] for part in spec.split("+"))
