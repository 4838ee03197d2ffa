"""`tl predict MODEL SOURCE... --ray [ADDRESS] -o results.parquet`: the same classification on Ray Data,
on a local Ray or a cluster (tl.runtime.raydata does the work; this module is its options and lines)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import click

from tl.runtime.errors import TLError
from tl.runtime.predict import PredictOptions
from tl.runtime.raydata import LOCAL, RayOptions

RAY_ARGS = ("ray", "actors")


def ray_click_options(command):
    """`tl predict`'s options for a run on Ray Data (defaults from RayOptions)."""
    from tl.cli import field_option

    options = [
        click.option("--ray", "ray", is_flag=False, flag_value=LOCAL, default=None, metavar="[ADDRESS]",
                     help="Classify on Ray Data, writing -o FILE.parquet or .csv (path, label, index, score, top_k, "
                          "error): alone, a local Ray for the run; auto or ray://HOST:PORT joins a running cluster. "
                          "One actor per GPU, else per --threads CPUs (default 1 thread each). "
                          "Put it after the sources or write --ray=ADDRESS."),
        field_option(RayOptions, "actors", type=click.IntRange(min=1), show_default=False,
                     help="--ray: inference actors [default: one per GPU, or one per --threads CPUs]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def take_ray_args(kwargs: dict) -> dict:
    """The --ray options, removed from ``kwargs`` (the rest are PredictOptions)."""
    return {k: kwargs.pop(k) for k in RAY_ARGS}


def predict_ray(paths, options: PredictOptions, fmt: str, output: Path | None, args: dict, stream_args: dict, *,
                check_output) -> bool:
    """Run `tl predict` on Ray Data when --ray is given; False when it is not."""
    if args["ray"] is None:
        if args["actors"] is not None:
            raise TLError("--actors applies to a run on Ray: add --ray")
        return False
    from tl.console import RichReporter, printable, stderr_console
    from tl.runtime.raydata import classify, connected, import_ray, is_url, list_sources, output_format, write_results

    _refuse_other_modes(fmt, output, stream_args)
    import_ray()  # before listing millions of files: a missing extra is the first thing to say
    sources = list_sources(paths)
    local = [Path(os.fsdecode(o)) for o in sources[1] if not is_url(os.fsdecode(o))]
    check_output(output, model=options.model, spec=options.spec, paths=paths, found=SimpleNamespace(images=local))
    ray_options = RayOptions(address=None if args["ray"] == LOCAL else args["ray"], actors=args["actors"],
                             threads=options.threads or 1)
    reporter = RichReporter()
    with connected(ray_options, reporter):
        ds = classify(options, ray_options, sources=sources, reporter=reporter)
        with reporter:
            run = write_results(ds, output, total=len(sources[0]), reporter=reporter)
    where = "a local Ray" if ray_options.local else f"the Ray cluster at {ray_options.address}"
    line = (f"{run.rows} images on {where} with {Path(options.model).name} in {run.seconds:.1f} s "
            f"({run.images_per_s:.1f} images/s); results in {output} ({output_format(output)})")
    stderr_console().print(printable(line), highlight=False, soft_wrap=True, markup=False)
    if run.errors:
        raise TLError(f"{run.errors} of {run.rows} images could not be read: their reasons are in the error column "
                      f"of {output} (the others were classified; fix or remove these files)")
    return True


def _refuse_other_modes(fmt: str, output: Path | None, stream_args: dict) -> None:
    from tl.runtime.raydata import OUTPUT_SUFFIXES, output_format

    if output is None:
        raise TLError(f"--ray writes its results to a file: add -o results{OUTPUT_SUFFIXES[0]} "
                      f"(or {OUTPUT_SUFFIXES[1]})")
    suffix = output_format(output)
    if _given("fmt") and fmt != suffix:
        raise TLError(f"--ray writes Parquet or CSV, chosen by -o's suffix; --format {fmt} does not apply "
                      f"(-o {output} writes {suffix})")
    video = [f"--{k.replace('_', '-')}" for k in stream_args if _given(k)]
    if video:
        raise TLError(f"{', '.join(video)} apply to a video, stream or camera; --ray classifies image files")


def _given(name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or in the environment), not its default."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
