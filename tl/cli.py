"""The `tl` command: a thin click layer over the library.

This module, ``tl.console`` and ``tl.commands`` are the command layer: the only code that
imports click or rich, and nothing in the library imports them. Each command module is
imported only when run or listed, so `tl --help` and `tl predict` work without torch; they
import only click and torch-free options at top level, heavy imports happen inside commands.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# name -> "module:attribute"; order is the order of `tl --help`.
COMMANDS = {
    "data": "tl.commands.data:data",
    "train": "tl.commands.train:train",
    "export": "tl.commands.export:export",
    "predict": "tl.commands.predict:predict",
    "info": "tl.commands.predict:info",
    "serve": "tl.commands.serve:serve",
    "bench": "tl.commands.bench:bench",
    "demo": "tl.commands.demo:demo",
}

# An optional package's top-level module -> the extra that installs it (pyproject.toml). A runtime-only
# install (an edge box) lacks torch: the commands that need it say so in one line instead of a traceback.
EXTRAS = {
    "torch": "train", "torchvision": "train", "onnxscript": "train", "matplotlib": "train",
    "onnx": "cpu", "onnxruntime": "cpu",
    "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "grpc": "serve", "tritonclient": "serve",
    "openvino": "openvino", "tensorrt": "gpu", "cuda": "gpu", "av": "video", "ray": "ray",
}
WITHOUT_TORCH = "without torch, tl predict, tl info, tl serve and tl export MODEL.onnx work"


def field_option(options_cls, name: str, *decls: str, **kwargs):
    """``--name`` for the field ``name`` of an options dataclass, with that field's default.

    Each option's default is defined once, on the dataclass the library takes; a bool
    field becomes ``--name/--no-name`` unless ``is_flag`` is given.
    """
    import dataclasses

    default = next(f.default for f in dataclasses.fields(options_cls) if f.name == name)
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool) and not kwargs.get("is_flag"):
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    kwargs.setdefault("default", default)
    kwargs.setdefault("show_default", kwargs["default"] is not None)
    return click.option(flag, *decls, name, **kwargs)


class PathParam(click.Path):
    """click.Path that refuses an empty name.

    ``''`` is what an unset shell variable gives (``tl train "$DATA"``), and to the file system it
    means the current folder: a command would train on, write into or serve whatever is there.
    Every path argument and option of every command uses this type.
    """

    def convert(self, value, param, ctx):
        if isinstance(value, (str, bytes)) and not os.fsdecode(value):
            self.fail("the path is empty (an unset shell variable?); give a file or folder name "
                      "(. for the current folder)", param, ctx)
        return super().convert(value, param, ctx)


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return list(self.lazy) + sorted(set(super().list_commands(ctx)) - set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # Same as click's, but keeps our order instead of sorting.
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tl", prog_name="tl")
def cli():
    """tl: train an image classifier, export it (ONNX FP32/FP16/INT8, TensorRT),
    serve it without torch, and benchmark every form against eager PyTorch.

    \b
      tl data synth data/shapes            # a learnable demo dataset
      tl train data/shapes --weights none  # fine-tune VGG16 -> runs/<time>/best.pt
      tl export runs/x/best.pt --onnx --int8 --out exports/x
      tl predict exports/x/model.onnx photos/
      tl bench runs/x exports/x --batch-sizes 1,8
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one `error:` line and a non-zero exit."""
    from tl.runtime.errors import TLError, debug_enabled

    debug = debug_enabled()
    try:
        # obj: the command line as given, for a command that starts itself again (tl train --nproc-per-node)
        cli.main(args=argv, prog_name="tl", standalone_mode=False,
                 obj={"argv": list(argv) if argv is not None else sys.argv[1:]})
    except TLError as e:
        if debug:
            raise
        click.echo(f"error: {_printable(e)}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:
        # `tl` or `tl data` alone: the help, not an error line; exit 2 as click's own commands do
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        if debug:
            raise
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(f"error: {_printable(e.format_message())}{hint}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except ModuleNotFoundError as e:
        message = missing_extra(e, argv if argv is not None else sys.argv[1:])
        if debug or message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    except OSError as e:
        # Last resort for a file operation no TLError wrapped: it names its file, so it is
        # the user's to fix (a read-only folder, a full disk). One without a file is a bug.
        if debug or not e.filename:
            raise
        from tl.runtime.files import os_error_message

        click.echo(f"error: {_printable(os_error_message(e))}", err=True)
        sys.exit(1)
    sys.exit(0)


def missing_extra(e: ModuleNotFoundError, argv: list[str]) -> str | None:
    """One line naming the extra that installs the missing package; None for a module tl does not know
    (a broken installation, or a bug: its traceback is the useful report)."""
    package = (e.name or "").split(".")[0]
    extra = EXTRAS.get(package)
    if extra is None or _installed(package):  # installed, but a part of it is missing: a broken install
        return None
    command = next((a for a in argv if a in COMMANDS), None)
    needs = f"tl {command}" if command else "this command"
    line = f"{needs} needs {package}, which is not installed: pip install 'tl[{extra}]' (the {extra} extra)"
    return f"{line}; {WITHOUT_TORCH}" if extra == "train" else line


def _installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _printable(message: object) -> str:
    """An error message with any escape sequence a file name brought in shown, not sent to the terminal."""
    from tl.console import printable

    return printable(message, keep_newlines=True)


if __name__ == "__main__":
    main()
