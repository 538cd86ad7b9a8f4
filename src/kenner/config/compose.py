"""Compose a run's config from its layers: defaults <- method <- config file <- profile <- flags <- --set.

The method decides which sections matter and gives some fields its own defaults (fine-tuning trains 15
epochs, a head 100) and fixed values (the ``mlp`` method always trains an mlp head). It is chosen by
``--method``, or by the seed pipelines' ``--mode`` (with ``--head-type``), or by an earlier run's config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kenner.config.fields import flag_name
from kenner.config.profiles import PROFILES, profile_layer
from kenner.config.tree import RunConfig, build_config, load_config_file, method_of_mode, to_nested
from kenner.errors import KennerError


class MethodDefaults(Protocol):
    """What composing needs of a method spec (:class:`kenner.methods.registry.MethodSpec`)."""

    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any]


def set_layer(overrides: Sequence[str], *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``--set field=value`` / ``--set section.field=value`` overrides as a nested layer."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KennerError(f"--set {item!r}: expected field=value or section.field=value")
        values[key.strip()] = value
    return to_nested(values, where="--set", warn=warn)


def _flat(layer: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: value for key, section in layer.items() if isinstance(section, Mapping) for name, value in section.items()
    }


def compose_config(
    methods: Mapping[str, MethodDefaults],
    *,
    method: str | None = None,
    mode: str | None = None,
    config_file: str | None = None,
    profile: str | None = None,
    explicit: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunConfig:
    """The run config of these layers (see the module docstring); ``explicit`` is nested by section."""
    explicit = dict(explicit or {})
    file_layer = load_config_file(config_file, warn=warn) if config_file else {}
    sets = set_layer(overrides, warn=warn)
    from_file = profile is None  # a profile from the file goes under the file's values, a new one over them
    profile = profile if profile is not None else file_layer.get("profile")
    if profile is not None and profile not in PROFILES:
        raise KennerError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    typed = {**_flat(explicit), **_flat(sets)}
    chosen = _choose_method(
        method, mode, typed.get("head_type"), file_layer.get("method"), PROFILES.get(profile or "", {}).get("head_type")
    )
    if chosen not in methods:
        raise KennerError(f"unknown method {chosen!r}; methods: {', '.join(sorted(methods))}")
    spec = methods[chosen]
    file_values = {key: value for key, value in file_layer.items() if key not in ("method", "profile", "out_dir")}
    before_profile = [to_nested(dict(spec.defaults)), file_values]
    epochs = build_config([*before_profile, explicit, sets])["epochs"]
    profiled = to_nested(profile_layer(profile, epochs))
    for name, value in spec.fixed.items():
        for source, given in (
            ("--profile " + str(profile), _flat(profiled).get(name)),
            (flag_name(name), typed.get(name)),
        ):
            if given is not None and str(given) != str(value):
                raise KennerError(
                    f"method {chosen!r} fixes {flag_name(name)} to {value!r}, but {source} sets "
                    f"{given!r}; choose the method that matches (--method {given})"
                )
    top = {
        "method": chosen,
        "profile": profile,
        "out_dir": out_dir or (file_layer.get("out_dir") if config_file else None),
    }
    layers = [to_nested(dict(spec.defaults)), profiled, file_values] if from_file else [*before_profile, profiled]
    return build_config([*layers, explicit, sets, to_nested(dict(spec.fixed)), top])


def _choose_method(
    method: str | None, mode: str | None, head_type: str | None, from_file: str | None, from_profile: str | None
) -> str:
    if method is not None:
        return method
    if mode is not None:
        return method_of_mode(mode, head_type or from_profile)
    if head_type is not None:
        return str(head_type)
    return from_file or from_profile or "linear"
