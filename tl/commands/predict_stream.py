"""`tl predict MODEL VIDEO|URL|CAMERA|'GLOB'`: classify a stream frame by frame.

Per-frame rows (JSON lines or CSV) are written as the frames are classified, so a camera that runs for
hours needs no memory for them and Ctrl-C keeps what was done: the rows, the annotated video and the
timeline so far are written, then one line and exit 130. A source that fails part-way (a truncated
file, a stream that stops) keeps its results the same way and ends with one error line.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tl.runtime.errors import TLError
from tl.runtime.predict import PredictOptions
from tl.runtime.stream import StreamOptions

EXIT_INTERRUPTED = 130
CSV_HEADER = ["frame", "time", "label", "index", "score", "top_k", "latency_ms"]


@dataclass(frozen=True)
class StreamOutputs:
    fmt: str  # table | json | csv
    output: Path | None  # None: stdout
    save_video: Path | None = None
    timeline: Path | None = None  # PNG
    summary: Path | None = None  # JSON


def stream_source(paths) -> str | None:
    """The one stream among ``paths`` (video, URL, camera, glob, pipeline), or None when all are images or
    folders (a folder stays a folder of images here); a stream mixed with other inputs is refused."""
    from tl.runtime.video import source_kind

    kinds = [(str(p), source_kind(p)) for p in paths]
    streams = [p for p, k in kinds if k is not None and not (k == "sequence" and Path(p).is_dir())]
    if not streams:
        return None
    if len(paths) > 1:
        raise TLError(f"give one video, stream or camera per tl predict (got {len(paths)} inputs, "
                      f"{len(streams)} of them streams: {', '.join(streams[:3])})")
    return streams[0]


def check_stream_outputs(outputs: StreamOutputs, *, model: Path, spec: Path | None, source: str, check_output) -> None:
    """Every file this run writes: none of them an input or each other, each writable, before any work.
    ``check_output``: `tl predict`'s check of one -o file."""
    from tl.runtime.predict import Inputs

    given = [(o, f) for o, f in (("-o", outputs.output), ("--save-video", outputs.save_video),
                                 ("--timeline", outputs.timeline), ("--summary", outputs.summary)) if f is not None]
    for i, (option, f) in enumerate(given):
        for other, g in given[:i]:
            if Path(f).resolve() == Path(g).resolve():
                raise TLError(f"{option} and {other} name the same file ({f}); give each its own")
        source_file = [source] if Path(source).is_file() else []
        with _option_named(option):
            check_output(Path(f), model=model, spec=spec, paths=source_file, found=Inputs())


@contextlib.contextmanager
def _option_named(option: str):
    try:
        yield
    except TLError as e:
        raise TLError(str(e).replace("-o ", f"{option} ", 1) if option != "-o" else str(e)) from e


class RowWriter:
    """Per-frame rows to stdout, or to a file published (atomically) when the stream ends, however it ends."""

    def __init__(self, fmt: str, output: Path | None):
        from tl.runtime.files import atomic_path, is_stream

        self.fmt, self.output = fmt, output
        self._atomic = None
        if output is None:
            self.file = sys.stdout
        elif is_stream(output):
            self.file = open(output, "w", encoding="utf-8")
        else:
            self._atomic = atomic_path(output)
            self.file = open(self._atomic.__enter__(), "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self.file, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._csv.writerow(CSV_HEADER)

    def write(self, result) -> None:
        from tl.runtime.predict import text_name

        row = result.to_dict()
        row["label"] = text_name(row["label"])
        if self.fmt == "json":
            self.file.write(json.dumps(row) + "\n")
        elif self._csv:
            self._csv.writerow([row["frame"], "" if row["time"] is None else f"{row['time']:.6f}", row["label"],
                                row["index"], f"{row['score']:.6f}",
                                ";".join(f"{text_name(l)}:{s:.6f}" for l, s in result.top_k), row["latency_ms"]])
        if self.output is None:
            self.file.flush()

    def write_text(self, text: str) -> None:
        self.file.write(text)

    def abort(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()
        if self._atomic is not None:
            with contextlib.suppress(TLError):
                self._atomic.__exit__(TLError, TLError("aborted"), None)

    def close(self) -> None:
        if self.file is sys.stdout:
            self.file.flush()
            return
        self.file.close()
        if self._atomic is not None:
            self._atomic.__exit__(None, None, None)


def predict_stream(source: str, options: PredictOptions, stream: StreamOptions, outputs: StreamOutputs, *,
                   timeout: float | None, fps: float | None, check_output) -> None:
    from tl.console import RichReporter, printable, stderr_console
    from tl.runtime.predict import load_classifier
    from tl.runtime.stream import FrameStream, summary
    from tl.runtime.video import OPEN_TIMEOUT, open_source

    check_stream_outputs(outputs, model=Path(options.model), spec=options.spec, source=source, check_output=check_output)
    reporter = RichReporter()
    with load_classifier(options, reporter=reporter) as clf:
        src = open_source(source, live=stream.live, timeout=timeout or OPEN_TIMEOUT, fps=fps)
        try:
            sinks = _Sinks(outputs, fps=(src.fps / stream.every) if src.fps else None)
        except BaseException:
            src.close()
            raise
        stream = dataclasses.replace(stream, keep_images=outputs.save_video is not None)
        frames = FrameStream(clf, src, stream)
        results, error, interrupted = [], None, False
        try:
            with reporter, reporter.task(f"classifying {src.describe()}", total=_expected(src, stream)) as task:
                for r in frames:
                    sinks.write(r)
                    results.append(dataclasses.replace(r, image=None))
                    task.advance()
        except TLError as e:
            error = e
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:  # a bug or a full disk: no half-written file is published
            sinks.abort()
            raise
        finally:
            frames.close()
        info = summary(results, frames.stats)
        info.update(model=clf.path.name, backend=clf.backend_name, precision=clf.precision)
        sinks.finish(results, info, clf.classes, title=f"{src.describe()} - {clf.path.name}")
    console = stderr_console()
    for line in summary_lines(info, outputs):
        console.print(printable(line), highlight=False, soft_wrap=True, markup=False)
    if interrupted:
        console.print(f"error: interrupted after {len(results)} frames; the results so far were written",
                      highlight=False, soft_wrap=True, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    if error is not None:
        raise TLError(f"{error} (the {len(results)} frames before were classified and written)") from error


def _expected(src, stream: StreamOptions) -> int | None:
    declared = getattr(src, "declared_frames", 0) or len(getattr(src, "files", ())) or None
    if stream.max_frames is not None:
        declared = min(declared or stream.max_frames, stream.max_frames)
    return -(-declared // stream.every) if declared and not src.live else None


class _Sinks:
    """Where each result goes as it comes (rows, annotated video) and what is drawn at the end."""

    def __init__(self, outputs: StreamOutputs, *, fps: float | None):
        from tl.runtime.annotate import VideoWriter

        self.outputs = outputs
        self.rows = RowWriter(outputs.fmt, outputs.output) if outputs.fmt != "table" else None
        self.video = VideoWriter(outputs.save_video, fps=fps) if outputs.save_video else None

    def write(self, result) -> None:
        from tl.runtime.annotate import draw_label, frame_text

        if self.rows is not None:
            self.rows.write(result)
        if self.video is not None:
            self.video.write(draw_label(result.image, frame_text(result.label, result.score)))

    def abort(self) -> None:
        if self.rows is not None:
            self.rows.abort()
        if self.video is not None:
            self.video.abort()

    def finish(self, results, info: dict, classes, *, title: str) -> None:
        from tl.runtime.annotate import save_timeline
        from tl.runtime.files import write_output

        if self.rows is None:
            table = segments_table(info)
            if self.outputs.output is None:
                sys.stdout.write(table)
            else:
                write_output(self.outputs.output, table.encode("utf-8"))
        else:
            self.rows.close()
        if self.video is not None:
            self.video.close()
        if self.outputs.timeline is not None and results:
            save_timeline(self.outputs.timeline, results, classes, title=title)
        if self.outputs.summary is not None:
            write_output(self.outputs.summary, (json.dumps(info, indent=2) + "\n").encode("utf-8"))


def segments_table(info: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    from tl.console import shown

    table = Table(title=f"{shown(info['model'])} on {shown(info['source'])}: label timeline", title_justify="left")
    for name in ("from", "to", "frames", "label", "mean score"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for seg in info["segments"]:
        table.add_row(_when(seg["start"], seg["start_frame"]), _when(seg["end"], seg["end_frame"]), str(seg["frames"]),
                      shown(seg["label"]), f"{seg['mean_score']:.3f}")
    buf = io.StringIO()
    Console(file=buf, width=120, no_color=True, highlight=False).print(table)
    return buf.getvalue()


def _when(t: float | None, frame: int) -> str:
    return f"{t:.2f} s" if t is not None else f"frame {frame}"


def summary_lines(info: dict, outputs: StreamOutputs) -> list[str]:
    skipped = f", {info['frames_skipped']} skipped (--every)" if info["frames_skipped"] else ""
    mode = "live" if info["live"] else f"batch {info['batch_size']}"
    lines = [f"{info['frames_read']} frames read, {info['frames_classified']} classified, {info['frames_dropped']} "
             f"dropped{skipped} from {info['source']} in {info['elapsed_s']:.1f} s ({info['fps']:.1f} frames/s, {mode}) "
             f"with {info['model']} ({info['backend']}, {info['precision']})"]
    if info["labels"]:
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in info["labels"].items()))
        segs = info["segments"]
        shown = ", ".join(f"{_when(s['start'], s['start_frame'])}-{_when(s['end'], s['end_frame'])} {s['label']}"
                          for s in segs[:8])
        lines.append(f"timeline: {len(segs)} segments: {shown}{' ...' if len(segs) > 8 else ''}")
    written = [str(f) for f in (outputs.output, outputs.save_video, outputs.timeline, outputs.summary) if f is not None]
    if written:
        lines.append("written: " + ", ".join(written))
    return lines


STREAM_ARGS = ("every", "max_frames", "max_seconds", "live", "save_video", "timeline", "summary", "timeout", "fps")


def stream_click_options(command):
    """`tl predict`'s options for video, cameras and streams (defaults from StreamOptions and tl.runtime.video)."""
    import click

    from tl.cli import PathParam, field_option
    from tl.runtime.video import OPEN_TIMEOUT, SEQUENCE_FPS

    options = [
        field_option(StreamOptions, "every", type=click.IntRange(min=1), help="Video: classify every Nth frame."),
        field_option(StreamOptions, "max_frames", type=click.IntRange(min=1),
                     help="Video: stop after this many frames read."),
        field_option(StreamOptions, "max_seconds", type=click.FloatRange(min=0, min_open=True),
                     help="Video: stop after this many seconds of the source."),
        click.option("--live/--no-live", default=None,
                     help="Video: drop stale frames to keep up (default: cameras and rtsp/rtmp/udp live, files and "
                          "http(s) not)."),
        click.option("--save-video", type=PathParam(path_type=Path),
                     help="Video: write the frames with label and score drawn on them (.mp4, .mkv, .avi, .webm)."),
        click.option("--timeline", type=PathParam(path_type=Path), help="Video: a PNG of label and score over time."),
        click.option("--summary", type=PathParam(path_type=Path),
                     help="Video: the summary (counts, labels, timeline segments, latency) as JSON."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=OPEN_TIMEOUT, show_default=True,
                     help="Video: seconds a network source may take to answer."),
        click.option("--fps", type=click.FloatRange(min=0, min_open=True),
                     help=f"Video: the frame rate of an image sequence ('frames/*.png') [default: {SEQUENCE_FPS:g}]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def take_stream_args(kwargs: dict) -> dict:
    """The video options, taken out of a `tl predict` call's keyword arguments."""
    return {name: kwargs.pop(name) for name in STREAM_ARGS}


def predict_command(paths, options: PredictOptions, fmt: str, output: Path | None, args: dict, *, check_output) -> bool:
    """Run `tl predict` on a stream when ``paths`` is one; False when they are images (and no video option is set)."""
    source = stream_source(paths)
    if source is None:
        given = [f"--{k.replace('_', '-')}" for k in ("save_video", "timeline", "summary") if args[k] is not None]
        if given:
            raise TLError(f"{', '.join(given)} apply to a video, stream or camera; {' '.join(map(str, paths))} "
                          "holds images")
        return False
    stream = StreamOptions(every=args["every"], max_frames=args["max_frames"], max_seconds=args["max_seconds"],
                           batch_size=options.batch_size, live=args["live"], top_k=options.top_k)
    outputs = StreamOutputs(fmt, output, args["save_video"], args["timeline"], args["summary"])
    predict_stream(source, options, stream, outputs, timeout=args["timeout"], fps=args["fps"], check_output=check_output)
    return True
