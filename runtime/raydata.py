"""Classify an image store on Ray Data: the same Classifier, preprocessing and answers as `tl predict`,
spread over one machine's cores or a cluster's nodes and GPUs, surviving a worker that dies.

    from tl.runtime.predict import PredictOptions
    from tl.runtime.raydata import RayOptions, connected, classify, write_results

    options = PredictOptions(model="exports/x/model.onnx", paths=["photos/"])
    with connected(RayOptions()):           # a local Ray for the run; RayOptions(address="auto") joins a cluster
        ds = classify(options)              # a lazy ray.data.Dataset: path, label, index, score, top_k, error
        write_results(ds, "results.parquet")

The plan: the file list becomes a dataset of paths (blocks of a few batches each); one stage of Ray
tasks reads, decodes and preprocesses each image through :mod:`tl.runtime.images` with the model's
spec; a pool of actors, each holding one :class:`~tl.runtime.classifier.Classifier`, runs the model
(one actor per GPU with ``num_gpus=1``; on CPUs, actors of ``threads`` CPUs each, which decode their
own batches: there the two stages run in one process). An image that cannot be read gets its reason
in the ``error`` column and the run goes on. Actors restart and their tasks are retried when a
worker process dies, so every input appears once in the output.

Ray is imported here only (the ``ray`` extra); ``import tl.runtime`` never imports it.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from tl.runtime.errors import TLError, debug_enabled, require
from tl.runtime.predict import PredictOptions, collect_inputs, text_name
from tl.runtime.progress import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow
    import ray.data

    from tl.runtime.spec import ModelSpec

RAY_EXTRA = "ray"
LOCAL = "local"  # --ray with no address: a Ray started for this run on this machine
OUTPUT_SUFFIXES = (".parquet", ".csv")
LIST_SUFFIXES = (".txt", ".lst")  # a SOURCE with one of these is a list file: one path or URL a line
CONNECT_TIMEOUT_S = 30.0
PROBE_METHOD = "/tl.Probe/Ping"  # no server has it: any gRPC server answers UNIMPLEMENTED (or refuses the caller)
MAX_BLOCKS = 10_000  # more blocks balance better and retry less work; each costs the scheduler a little
BATCHES_PER_BLOCK = 4
CLIENT_INIT_FAILURE = "Initialization failure from server"  # Ray Client's words for a server it could not start
CLIENT_INIT_ATTEMPTS = 3
CLIENT_INIT_PAUSE_S = 1.0


@dataclass(frozen=True)
class RayOptions:
    """Where the run happens and how the inference actors are sized.

    address: None (a local Ray for the run), ``auto`` (the cluster this machine belongs to, after
    ``ray start``) or ``ray://HOST:PORT`` (a cluster's Ray Client server) or ``HOST:PORT`` (its GCS).
    actors: inference actors; None = one per GPU in the cluster, or on CPUs one per ``threads`` CPUs.
    threads: CPUs each CPU actor reserves, and ONNX Runtime's intra-op threads in it.
    num_cpus: the CPUs a local Ray may use (None: all).
    """

    address: str | None = None
    actors: int | None = None
    threads: int = 1
    num_cpus: int | None = None
    connect_timeout: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        require((self.actors is None or self.actors >= 1, f"--actors must be at least 1 (got {self.actors})"),
                (self.threads >= 1, f"--threads must be at least 1 (got {self.threads})"),
                (self.num_cpus is None or self.num_cpus >= 1, f"num_cpus must be at least 1 (got {self.num_cpus})"),
                (self.connect_timeout > 0, f"the connection timeout must be positive (got {self.connect_timeout})"))

    @property
    def local(self) -> bool:
        return self.address in (None, LOCAL)


# -- Ray itself ---------------------------------------------------------------------------------------
def import_ray():
    """``ray`` with Ray Data, or one line naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its data extra has no pyarrow/pandas)
    except ImportError as e:
        raise TLError(f"--ray needs Ray Data, which is not installed ({e}); install tl's ray extra: "
                      f"pip install 'tl[{RAY_EXTRA}]'") from None
    return ray


@contextlib.contextmanager
def connected(options: RayOptions = RayOptions(), reporter: Reporter = SILENT) -> Iterator[None]:
    """Ray started (local) or joined (a cluster) for the block; shut down or left after it. A Ray
    this process has initialised already (a notebook's, a test's) is used as it is, whatever the options.

    An address that takes no connection within ``connect_timeout`` is one error line, not minutes of retries.
    A connection the Ray Client's server fails to start is tried again (``reporter`` is told).
    """
    ray = import_ray()
    if ray.is_initialized():  # the caller's own Ray (a notebook, a test): use it as it is
        yield
        return
    _check_reachable(options)
    with _ray_logs_quiet():
        _init(ray, _init_kwargs(options), options, reporter)
        try:
            _quiet_data_context()
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _ray_logs_quiet() -> Iterator[None]:
    """Ray's and Ray Data's INFO/WARNING lines (token setup, plans, 'execution finished') kept off the
    caller's stderr for the block: a library says nothing unless asked (TL_DEBUG)."""
    import logging

    quiet = {"ray": logging.ERROR, "ray.data": logging.CRITICAL}  # Ray Data logs the error the caller is raised
    loggers = [logging.getLogger(n) for n in quiet]
    levels = [l.level for l in loggers]
    if not debug_enabled():
        for l, level in zip(loggers, quiet.values()):
            l.setLevel(level)
    try:
        yield
    finally:
        for l, level in zip(loggers, levels):
            l.setLevel(level)


def _init_kwargs(options: RayOptions) -> dict:
    import logging

    kwargs: dict = {"logging_level": logging.DEBUG if debug_enabled() else logging.ERROR,
                    "log_to_driver": debug_enabled()}
    if options.local:
        kwargs.update(num_cpus=options.num_cpus, include_dashboard=False)
    else:
        kwargs["address"] = options.address
    return kwargs


def _check_reachable(options: RayOptions) -> None:
    """HOST:PORT where no gRPC server answers within the timeout (Ray's GCS and its Client server both
    speak gRPC) is refused before Ray retries it for minutes. A TCP connection alone proves little: a
    proxy or a firewall may accept it for any address."""
    if options.local or options.address == "auto":
        return
    target = options.address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise TLError(f"--ray {options.address}: give auto, ray://HOST:PORT or HOST:PORT (e.g. ray://head:10001)")
    reason = _no_grpc_answer(host, int(port), options.connect_timeout)
    if reason:
        raise TLError(f"--ray {options.address}: cannot reach the Ray cluster within {options.connect_timeout:g} s "
                      f"({reason}); start it with `ray start --head` there, check the address and port "
                      "(10001 for ray://, 6379 for the GCS) and the firewall")


def _no_grpc_answer(host: str, port: int, timeout: float) -> str | None:
    """Why no gRPC server answers at HOST:PORT within ``timeout`` (None: one does). Without grpcio (the
    Ray Client's package), a TCP connection is what is checked."""
    try:
        import grpc
    except ImportError:
        try:
            socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
        except OSError as e:
            return "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return None
    # gRPC calls a channel ready once TCP connects; only an answer to a call shows a server is there.
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            channel.unary_unary(PROBE_METHOD)(b"", timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "no gRPC server answered"
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return (e.details() or "unavailable").splitlines()[0]
            if "http2 header with status" in (e.details() or ""):  # gRPC core's words for a non-gRPC reply
                return f"something else answered there: {e.details()}"
    return None  # any other answer (UNIMPLEMENTED, UNAUTHENTICATED) came from a gRPC server


def _init(ray, kwargs: dict, options: RayOptions, reporter: Reporter = SILENT) -> None:
    """ray.init, its failure as one line. A reachable cluster that does not answer gives up by Ray's own
    bounds (the Ray Client's connection retries, the GCS request timeout). Through the Ray Client, the
    head's proxy starts a server process for each connecting driver; when that start fails, the proxy
    answers "Initialization failure from server" and Ray does not try again, so tl does, up to
    CLIENT_INIT_ATTEMPTS times (a failed connect leaves no state behind: Ray disconnects it)."""
    where = "a local Ray" if options.local else f"the Ray cluster at {options.address}"
    attempts = CLIENT_INIT_ATTEMPTS if str(options.address).startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as e:  # ConnectionError, RuntimeError, ValueError: Ray's own, in many shapes
            server_failed = CLIENT_INIT_FAILURE in str(e)
            if server_failed and attempt < attempts:
                reporter.warning(f"--ray: {where}: {_failure_reason(e)}; connecting again ({attempt + 1} of {attempts})")
                time.sleep(CLIENT_INIT_PAUSE_S)
                continue
            hint = ("start one with `ray start --head`, or give no address for a local Ray"
                    if options.address == "auto"
                    else "check the address, that the cluster runs the same Ray and Python versions as this "
                         "machine, and, for a cluster with token authentication, RAY_AUTH_MODE=token and its "
                         "token here (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            tried = f" ({attempts} attempts)" if server_failed and attempts > 1 else ""
            raise TLError(f"--ray: cannot start or join {where}{tried}: {_failure_reason(e)}; {hint}") from None


def _failure_reason(error: BaseException) -> str:
    """One line for Ray's failure. Ray Client's "Initialization failure from server:" is followed by the
    server's traceback, whose last line says what went wrong; other errors say it in their first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith(CLIENT_INIT_FAILURE) and len(lines) > 1:
        return f"the cluster's Ray Client server failed: {lines[-1]}"
    return lines[0]


def _quiet_data_context() -> None:
    """No progress bars or per-operator log lines from Ray Data on the caller's terminal (TL_DEBUG shows them)."""
    from ray.data import DataContext

    if not debug_enabled():
        DataContext.get_current().enable_progress_bars = False


# -- inputs ------------------------------------------------------------------------------------------
def is_url(source: str | os.PathLike) -> bool:
    return "://" in str(source) and not Path(source).exists()


def list_sources(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[bytes]]:
    """The images to classify: (names as written to the output, what workers open: a local file's
    absolute path or a URL, as bytes, so that any name the OS allows survives).

    Folders and files as ``tl predict`` finds them (the same files, names and order); a glob
    (``photos/**/*.jpg``); a list file (``.txt``/``.lst``: one image path or URL a line, relative to
    the list's folder, ``#`` comments; not checked here, so a list of millions costs no stat each, and
    a missing file is a row with its error); an object-store URL (``s3://bucket/prefix``, through Ray's
    filesystem layer, pyarrow.fs). Local files are opened by absolute path: on a cluster, every node
    must see them at that path (a shared file system).
    """
    shown: list[str] = []
    opened: list[bytes] = []
    for source in paths:
        text = os.fspath(source)
        if is_url(text):
            urls = _urls_under(text)
            shown += urls
            opened += [u.encode("utf-8", "surrogateescape") for u in urls]
            continue
        if Path(text).suffix.lower() in LIST_SUFFIXES and Path(text).is_file():
            for entry in _list_file(Path(text)):  # taken as listed: a missing one is a row with its error
                shown.append(text_name(entry))
                opened.append(entry.encode("utf-8", "surrogateescape") if is_url(entry)
                              else os.fsencode(os.path.abspath(Path(text).parent / entry)))
            continue
        if glob.has_magic(text) and not Path(text).exists():
            matched = sorted(glob.glob(text, recursive=True))
            if not matched:
                raise TLError(f"no files match {text}")
            found = collect_inputs(matched)
        else:
            found = collect_inputs([text])
        for f in found.images:
            shown.append(text_name(str(f)))
            opened.append(os.fsencode(os.path.abspath(f)))
    return shown, opened


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as e:
        raise TLError(f"list file {path}: cannot read it ({e.strerror})") from None
    entries = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    if not entries:
        raise TLError(f"list file {path} names no images; give one path or URL a line")
    return entries


def _urls_under(url: str) -> list[str]:
    """Image files at or under an object-store URL, sorted."""
    import pyarrow.fs as pafs

    from tl.runtime.images import is_image_file

    try:
        fs, root = pafs.FileSystem.from_uri(url)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            files = [root]
        elif info.type == pafs.FileType.Directory:
            files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                           if i.type == pafs.FileType.File)
        else:
            raise TLError(f"not found: {url}")
    except (OSError, ValueError, pyarrow_errors()) as e:
        raise TLError(f"{url}: cannot list it ({e})") from None
    scheme = url.split("://", 1)[0]
    images = [f"{scheme}://{f}" for f in files if is_image_file(f)]
    if not images:
        raise TLError(f"no images found under {url} (jpg, png, bmp, gif, tif, webp)")
    return images


def pyarrow_errors() -> type[Exception]:
    import pyarrow

    return pyarrow.ArrowException


# -- the stages -------------------------------------------------------------------------------------
def classify(options: PredictOptions, ray_options: RayOptions = RayOptions(), *,
             sources: tuple[list[str], list[bytes]] | None = None, reporter: Reporter = SILENT) -> "ray.data.Dataset":
    """The images of ``options.paths`` classified by ``options.model``: a lazy Dataset, one row per
    image (path, label, index, score, top_k, error), in the order the workers finish them.

    The model loads here first (its spec plans the decode stage, and a file that does not load is an
    error now, not in every worker). ``sources``: what :func:`list_sources` returned for
    ``options.paths``, when the caller has listed them already. Call inside :func:`connected` (or with
    your own ``ray.init``).
    """
    import pyarrow as pa

    from tl.runtime.predict import load_classifier

    ray = import_ray()
    model = Path(options.model).absolute()  # workers do not share this process's working folder
    options = _replace(options, model=model, spec=Path(options.spec).absolute() if options.spec else None)
    with load_classifier(options, reporter=reporter) as clf:
        spec = clf.spec
    shown, opened = sources if sources is not None else list_sources(options.paths)
    table = pa.table({"path": pa.array(shown, pa.string()), "file": pa.array(opened, pa.binary())})
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = _pool_size(ray, ray_options, gpus)
    blocks = _blocks(table, options.batch_size, pool)
    ds = ray.data.from_arrow(blocks)
    if gpus:  # the CPUs decode in tasks of their own and feed the GPU actors
        ds = ds.map_batches(decode_batch, fn_args=(spec,), batch_size=None, batch_format="pyarrow", num_cpus=1)
    resources = {"num_gpus": 1} if gpus else {"num_cpus": ray_options.threads}
    return ds.map_batches(Infer, fn_constructor_args=(options, ray_options.threads, gpus > 0),
                          batch_size=options.batch_size, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=min(pool, len(blocks))), **resources)


def _replace(options: PredictOptions, **changes) -> PredictOptions:
    from dataclasses import replace

    return replace(options, **changes)


def _blocks(table: "pyarrow.Table", batch_size: int, pool: int) -> list["pyarrow.Table"]:
    """The path table cut into blocks, the units Ray schedules, balances and retries: a few batches
    each, but at least two per actor when the input is small (a slow model's few images still spread
    over the pool), and at most MAX_BLOCKS."""
    n = table.num_rows
    rows = min(batch_size * BATCHES_PER_BLOCK, math.ceil(n / (2 * pool)))
    rows = max(1, rows, math.ceil(n / MAX_BLOCKS))
    return [table.slice(start, rows) for start in range(0, n, rows)]


def _pool_size(ray, options: RayOptions, gpus: int) -> int:
    """One actor per GPU (``num_gpus=1``), or on CPUs one per ``threads`` CPUs, each decoding its own batches.

    A CPU actor that decodes keeps every core busy with no preprocessed images through the object
    store, and no CPU is held by actors while decode tasks wait for one. Ray Data restarts a dead
    actor and retries the batch it held (max_restarts and max_task_retries are unlimited for actor
    pools): that keeps every input once in the output.
    """
    if options.actors:
        return options.actors
    if gpus:
        return gpus
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // options.threads)


def decode_batch(batch: "pyarrow.Table", spec: "ModelSpec") -> "pyarrow.Table":
    """Read, decode and preprocess each image of a block; an unreadable one gets a zero image and its reason."""
    import numpy as np
    import pyarrow as pa

    from tl.runtime.images import pixel_limit, preprocess_one

    shape = (spec.input.channels, spec.input.height, spec.input.width)
    arrays, errors = [], []
    with pixel_limit():
        for name, opened in zip(batch.column("path").to_pylist(), batch.column("file").to_pylist()):
            try:
                arrays.append(_preprocess(opened, spec, preprocess_one))
                errors.append(None)
            except TLError as e:
                arrays.append(np.zeros(shape, np.float32))
                errors.append(_error_text(e, opened, name))
    images = np.stack(arrays) if arrays else np.zeros((0, *shape), np.float32)
    return pa.table({"path": batch.column("path"),
                     "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), math.prod(shape)),
                     "error": pa.array(errors, pa.string())})


def _error_text(e: TLError, opened: bytes, name: str) -> str:
    """The reason, naming the image as the output's path column does (not the absolute path workers opened)."""
    text = str(e).replace(os.fsdecode(opened), name)
    return text_name(text if name in text else f"{name}: {text}")


def _preprocess(opened: bytes, spec, preprocess_one):
    name = os.fsdecode(opened)
    return preprocess_one(_read_url(name) if is_url(name) else Path(name), spec)


def _read_url(url: str):
    import io

    import pyarrow.fs as pafs

    from tl.runtime.images import decode_image

    try:
        fs, path = pafs.FileSystem.from_uri(url)
        with fs.open_input_file(path) as f:
            data = f.read()
    except (OSError, ValueError, pyarrow_errors()) as e:
        raise TLError(f"{url}: cannot be read ({e})") from None
    return decode_image(io.BytesIO(data), url)


class Infer:
    """One inference actor: the model loaded once, then batch after batch of preprocessed images.

    A model this worker cannot load fails its first batch, not its constructor: Ray restarts an actor
    that dies while starting, over and over, printing the traceback each time, where a failed batch
    ends the run with the one error the driver turns into a line.
    """

    def __init__(self, options: PredictOptions, threads: int, gpu: bool):
        from tl.runtime.predict import load_classifier

        if not gpu:
            options = _replace(options, threads=threads)
        else:  # Ray makes the GPU it assigned the only visible one
            options = _replace(options, device=0)
        self.top_k = options.top_k
        self.clf, self.error = None, None
        try:
            self.clf = load_classifier(options)
        except TLError as e:
            self.error = f"a Ray worker on {socket.gethostname()} cannot load the model: {e}"

    def __call__(self, batch: "pyarrow.Table") -> "pyarrow.Table":
        import numpy as np

        if self.clf is None:
            raise WorkerModelError(self.error)
        spec = self.clf.spec
        if "image" not in batch.column_names:  # paths: this actor decodes them itself (CPU actors)
            batch = decode_batch(batch, spec)
        errors = batch.column("error").to_pylist()
        ok = [i for i, e in enumerate(errors) if e is None]
        flat = batch.column("image").combine_chunks()
        images = np.asarray(flat.flatten()).reshape(len(batch), spec.input.channels, spec.input.height,
                                                     spec.input.width)
        preds = self.clf.postprocess(self.clf.predict_logits(images[ok]), top_k=self.top_k) if ok else []
        by_row = dict(zip(ok, preds))
        return result_table(batch.column("path").to_pylist(), [by_row.get(i) for i in range(len(batch))], errors)


class WorkerModelError(TLError):
    """A worker could not load the model the driver loaded: a file not on every node, another version."""


RESULT_COLUMNS = ("path", "label", "index", "score", "top_k", "error")


def result_schema() -> "pyarrow.Schema":
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    return pa.schema([("path", pa.string()), ("label", pa.string()), ("index", pa.int32()),
                      ("score", pa.float64()), ("top_k", top), ("error", pa.string())])


def result_table(paths: list[str], preds: list, errors: list[str | None]) -> "pyarrow.Table":
    """One row per image: the prediction's fields as ``tl predict`` writes them, or nulls and the error."""
    import pyarrow as pa

    rows = {c: [] for c in RESULT_COLUMNS}
    for path, p, err in zip(paths, preds, errors):
        rows["path"].append(path)
        rows["error"].append(err)
        rows["label"].append(text_name(p.label) if p else None)
        rows["index"].append(p.index if p else None)
        rows["score"].append(p.score if p else None)
        rows["top_k"].append([{"label": text_name(l), "score": s} for l, s in p.top_k] if p else None)
    return pa.Table.from_pydict(rows, schema=result_schema())


# -- output ------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    rows: int
    errors: int  # images in the error column
    seconds: float
    first_rows: int = 0  # the first result batch: when it came, the actors were up
    first_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def steady_images_per_s(self) -> float:
        """Images/s once the first batch is out: the pool's pace without its start."""
        rest = self.seconds - self.first_seconds
        return (self.rows - self.first_rows) / rest if rest > 0 and self.rows > self.first_rows else float("nan")


def output_format(output: str | os.PathLike) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise TLError(f"-o {output}: --ray writes Parquet or CSV, chosen by the suffix: "
                      f"give a file name ending in {' or '.join(OUTPUT_SUFFIXES)}")
    return suffix[1:]


def write_results(ds: "ray.data.Dataset", output: str | os.PathLike, *, total: int | None = None,
                  reporter: Reporter = SILENT) -> RunSummary:
    """Run ``ds`` and stream its rows into one Parquet or CSV file (by suffix), published only when complete.

    ``total``: the number of inputs; a run that returns another number of rows is an error (and no
    file), never a silently short or doubled result.
    """
    import time

    from tl.runtime.files import atomic_path

    fmt = output_format(output)
    start = time.perf_counter()
    rows = errors = first_rows = 0
    first_seconds = 0.0
    with atomic_path(output) as tmp, _writer(tmp, fmt) as write, reporter.task("classifying", total=total) as task:
        for batch in _run(ds):
            write(batch)
            if not rows:
                first_rows, first_seconds = batch.num_rows, time.perf_counter() - start
            rows += batch.num_rows
            errors += batch.num_rows - batch.column("error").null_count
            task.advance(batch.num_rows)
        if total is not None and rows != total:
            raise TLError(f"Ray returned {rows} results for {total} images; {output} was not written. "
                          "Run again (TL_DEBUG=1 shows Ray's logs)")
    return RunSummary(rows, errors, time.perf_counter() - start, first_rows, first_seconds)


def _run(ds: "ray.data.Dataset") -> Iterator["pyarrow.Table"]:
    """The result batches as they finish; a worker that cannot load the model is one error line."""
    try:
        yield from _relayed(ds) if _through_ray_client() else ds.iter_batches(batch_format="pyarrow", batch_size=None)
    except Exception as e:
        cause = _worker_model_error(e)
        if cause is None:
            raise
        raise TLError(f"{cause} (the file must be readable at the same absolute path on every node: "
                      "a shared file system, or copy it there)") from None


def _through_ray_client() -> bool:
    from ray.util.client import ray as client

    return client.is_connected()


def _relayed(ds: "ray.data.Dataset") -> Iterator["pyarrow.Table"]:
    """The result batches through an actor in the cluster: over the Ray Client (``ray://``) this process
    is no Ray driver, and Ray Data's streaming executor must run where one is."""
    import ray

    relay = ray.remote(num_cpus=0)(_Relay).remote(ds)
    try:
        while (batch := ray.get(relay.next.remote())) is not None:
            yield batch
    finally:
        ray.kill(relay)


class _Relay:
    """Runs a dataset in the cluster and hands its result batches out one call at a time."""

    def __init__(self, ds: "ray.data.Dataset"):
        self.batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))

    def next(self) -> "pyarrow.Table | None":
        return next(self.batches, None)


def _worker_model_error(e: BaseException) -> str | None:
    """The WorkerModelError message inside whatever Ray wrapped it in (RayTaskError, ActorDiedError, ...)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WorkerModelError):
            return str(e)
        marker = f"{WorkerModelError.__name__}: "
        lines = [l for l in str(e).splitlines() if marker in l]
        if lines:  # Ray's RayTaskError carries the worker's traceback as text; the last line is the message
            return lines[-1].split(marker, 1)[1].strip()
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def _writer(path: Path, fmt: str):
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with pq.ParquetWriter(path, result_schema()) as w:
            yield lambda batch: w.write_table(batch.cast(result_schema()))
        return
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_HEADER)
        yield lambda batch: w.writerows(csv_rows(batch))


CSV_HEADER = ("path", "label", "index", "score", "top_k", "error")


def csv_rows(batch: "pyarrow.Table") -> Iterator[list]:
    """Rows as ``tl predict --format csv`` writes its columns (score to 6 places, top-k as label:score;...)."""
    for r in batch.to_pylist():
        if r["error"] is not None:
            yield [r["path"], "", "", "", "", r["error"]]
            continue
        top = ";".join(f"{k['label']}:{k['score']:.6f}" for k in r["top_k"])
        yield [r["path"], r["label"], r["index"], f"{r['score']:.6f}", top, ""]


classify_on_ray = classify  # the name tl.runtime exports (``tl.runtime.classify_on_ray``)
