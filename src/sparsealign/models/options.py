"""`--device --dtype --revision --trust-remote-code --device-map`: the loader's flags on every verb that loads a model
for inference (click + stdlib only, so `--help` stays light). The wrapped command receives `device` and `dtype` as
they are and the other three as one `loader` dict."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click


def loader_options(fn: Callable) -> Callable:
    """Decorator: adds the five flags and passes `loader={"revision", "trust_remote_code", "device_map"}`."""

    @functools.wraps(fn)
    def wrapper(*args, revision, trust_remote_code, device_map, **kwargs):
        loader = {"revision": revision, "trust_remote_code": trust_remote_code, "device_map": device_map}
        return fn(*args, loader=loader, **kwargs)

    wrapper.__click_params__ = list(getattr(fn, "__click_params__", []))  # type: ignore[attr-defined]
    options = [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", default="auto", show_default=True,
                     help="Model dtype: auto, float32, bfloat16, float16."),
        click.option("--revision", default=None, metavar="REV", help="Hub ids: branch, tag or commit to load."),
        click.option("--trust-remote-code", is_flag=True, help="Hub ids: allow the repository's own model code."),
        click.option("--device-map", default=None, metavar="MAP",
                     help="accelerate placement, e.g. auto (a model larger than one device); overrides --device."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper
