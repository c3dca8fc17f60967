"""The latency table: entries on disk (CSV + meta.json), prediction by pure lookup.

Entries are whole inverted-residual blocks, the stem, the last conv (+ global pool) and
the head, at exact widths: onnxruntime fuses and re-lays-out the ops inside a block
(the expansion's activation into its conv, the depthwise conv's blocked layout), so a
block timed whole predicts the network far better than the sum of its ops timed one by
one, and latency is not monotone in width (the 8-vs-16 sawtooth), so nothing is
interpolated (docs/latency.md). A block's expansion, a last conv's output and a head's
widths are priced as the median of their own timing and their neighbours' in the same
alignment (SMOOTHED): a search picks the widths whose timing came out low.

One exception keeps the grid small: a block without residual has three free widths
(input, expansion, output). Its entries are measured on two exact slices through the
seed's widths, (c, e, out_seed) and (in_seed, e, o), and other points are composed as
T(c,e,o) = T(c,e,o_seed) + T(c_seed,e,o) - T(c_seed,e,o_seed): the input width only
touches the expansion conv and the output width only the projection conv, which do not
share data but the expanded tensor. benchmarks/bench_latency.py measures how far that is
from timing the point itself.

The number of classes is not searched: a head is measured for the seed's classes and
its last Gemm alone for 10, 100 and 1000 classes (CLASSES), so any other count is a
swap of that Gemm.

A prediction is factor x (sum of entries - boundary x their input elements - per_entry x
their number), all three fitted per seed structure to networks timed end to end
(calibrate.py says why each is there).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import LatencyError, NetadaptError
from ..files import write_bytes_atomic, write_text_atomic
from ..resources import search_roots, user_dir
from ..spec import WIDTH_STEP, ClassifierHead, Layer, NetworkSpec, spec_from_dict, walk
from .graphs import BLANK, FIELD_TYPES, KEY_FIELDS, EntryKey, classifier_key, entry_key, entry_keys

FORMAT = 1
KEY_COLUMNS = list(KEY_FIELDS)  # the CSV's key columns: spec.Layer's, see EntryKey
COLUMNS = KEY_COLUMNS + ["ms", "spread", "n"]
OPTIONAL_COLUMNS = ("h_out", "w_out")  # tables written before segmentation lack them
_BOOL = tuple(c for c in KEY_COLUMNS if FIELD_TYPES[c] is bool)
_STR = tuple(c for c in KEY_COLUMNS if FIELD_TYPES[c] is str)


def tables_dir(root: Path | None = None) -> Path:
    """Where tables are written: ``root``, else the user directory (never the shipped
    files: netadapt/resources.py)."""
    return (root or user_dir()) / "latency_tables"


def signature(spec: NetworkSpec) -> str:
    """What stays fixed while the search shrinks widths: the calibration's key."""
    blocks = ",".join(f"{b.kernel}{b.stride}{b.dilation}{int(b.se)}{b.act[0]}"
                      f"{int(b.expand)}{int(b.residual)}" for b in spec.blocks)
    return (f"{spec.input_size[0]}x{spec.input_size[1]}x{spec.in_channels}/"
            f"{spec.stem.kernel}{spec.stem.stride}/{blocks}")


def _structure(spec: NetworkSpec) -> tuple[Any, ...]:
    return (spec.input_size, spec.in_channels, spec.stem.kernel, spec.stem.stride,
            tuple((b.kernel, b.stride, b.dilation, b.se, b.act, b.expand, b.residual)
                  for b in spec.blocks))


def _shape_class(key: EntryKey) -> tuple[Any, ...]:
    return (key.kernel, key.stride, key.dilation, key.se, key.act, key.h, key.w)


def composed(key: EntryKey) -> bool:
    """Blocks measured on two slices and composed (see the module docstring)."""
    return key.kind == "block" and key.expand and not key.residual


def _read_csv(path: Path | io.BytesIO) -> pd.DataFrame:
    """A table's rows, typed; ValueError names a missing column or a malformed row."""
    frame = pd.read_csv(path, dtype={c: str for c in _STR})
    for c in OPTIONAL_COLUMNS:
        if c not in frame.columns:
            frame[c] = 0
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    for c in _BOOL:
        if frame[c].dtype != bool:
            frame[c] = frame[c].map({"True": True, "False": False, True: True, False: False})
    if frame[COLUMNS].isna().any().any():
        bad = int(frame[COLUMNS].isna().any(axis=1).idxmax())
        raise ValueError(f"row {bad + 2} is incomplete or malformed")
    return frame


def frame_to_csv(frame: pd.DataFrame) -> str:
    """A table frame as the CSV text a table file holds (its COLUMNS, 5 digits)."""
    buf = io.StringIO()
    out = frame[COLUMNS].copy()
    for c in _BOOL:  # 0 / 1, not False / True: 11 bytes a row, 0.8 MB of a 70k-row table
        out[c] = out[c].astype(int)
    out.to_csv(buf, index=False, float_format="%.5g")
    return buf.getvalue()


def entry_input_m(key: EntryKey) -> float:
    """Millions of elements of the entry's input tensor."""
    return key.c_in * key.h * key.w / 1e6


def input_elements_m(spec: NetworkSpec) -> float:
    """Millions of input elements summed over the spec's entries (see fit_calibration)."""
    return sum(entry_input_m(k) for _, k in entry_keys(spec))


class LatencyTable:
    """Predicts a spec's latency on one device by summing table entries.

    ``predict_ms`` is a pure lookup (entries are cached per key, whole specs per spec);
    a spec whose entries are not all in the table raises a LatencyError naming the
    entry and the command that adds it.
    """

    def __init__(self, device: str, entries: dict[EntryKey, float], meta: dict[str, Any]
                 ) -> None:
        self.device = device
        self.meta = meta
        self.is_estimate = bool(meta.get("estimate", False))
        self._entries = entries
        self._anchors: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        self._calibration: dict[str, float] = {}
        self._boundary: dict[str, float] = {}  # ms per M input elements (fit_calibration)
        self._per_entry: dict[str, float] = {}  # ms per entry (fit_calibration)
        self._seeds: list[NetworkSpec] = []
        self._seed_classes: list[int] = []
        self._multiplier_seeds: set[str] = set()  # covered at multipliers only
        for seed_meta in meta.get("seeds", []):
            seed = spec_from_dict(seed_meta["spec"])
            self._seeds.append(seed)
            if seed_meta.get("coverage", "grid") == "multipliers":
                self._multiplier_seeds.add(seed.name)
            if seed.num_classes not in self._seed_classes:
                self._seed_classes.append(seed.num_classes)
            self._calibration[signature(seed)] = float(seed_meta.get("factor", 1.0))
            self._boundary[signature(seed)] = float(seed_meta.get("boundary_ms_per_m", 0.0))
            self._per_entry[signature(seed)] = float(seed_meta.get("per_entry_ms", 0.0))
            for _, key in entry_keys(seed):
                if composed(key):
                    self._anchors.setdefault(_shape_class(key), []).append(
                        (key.c_in, key.out))
        # a structure no seed has (another seed's widths): the median seed's calibration
        calibrations = sorted((f, self._boundary[s], self._per_entry[s])
                              for s, f in self._calibration.items())
        self._default_calibration = \
            calibrations[len(calibrations) // 2] if calibrations else (1.0, 0.0, 0.0)
        self._resolved: dict[EntryKey, float | None] = {}
        self._windowed: dict[tuple[int, EntryKey], float | None] = {}  # see _smoothed
        self._specs: dict[NetworkSpec, float] = {}
        self._layers: dict[Layer, tuple[float, float]] = {}  # (ms, M input elements)
        self._factors: dict[tuple[Any, ...], tuple[float, float, float]] = {}

    # ------------------------------------------------------------------ lookup
    @property
    def seeds(self) -> list[NetworkSpec]:
        """The seeds the table covers (and is calibrated for)."""
        return list(self._seeds)

    def __len__(self) -> int:
        return len(self._entries)

    def entry_ms(self, key: EntryKey) -> float | None:
        """Uncalibrated ms of one entry (exact, or composed from two slices), or None."""
        if key in self._resolved:
            return self._resolved[key]
        value = self._smoothed(key, len(SMOOTHED.get(key.kind, ())))
        if value is None and key.kind == "classifier":
            value = _interpolated_classes(self._entries, key)
        self._resolved[key] = value
        return value

    def _smoothed(self, key: EntryKey, windows: int) -> float | None:
        """The entry with the first ``windows`` of its kind's SMOOTHED windows applied
        (0: as timed or derived), cached: neighbouring entries share their windows."""
        if not windows:
            return self._head_at(key) if key.kind == "head" else self._timed(key)
        if (windows, key) not in self._windowed:
            field, step = SMOOTHED[key.kind][windows - 1]
            self._windowed[(windows, key)] = _width_window_median(
                lambda k: self._smoothed(k, windows - 1), key, field, step)
        return self._windowed[(windows, key)]

    def _timed(self, key: EntryKey) -> float | None:
        """An entry as timed, or composed from two slices (module docstring)."""
        value = self._entries.get(key)
        if value is None and composed(key):
            for c0, o0 in self._anchors.get(_shape_class(key), []):
                a = self._entries.get(key._replace(out=o0))
                b = self._entries.get(key._replace(c_in=c0))
                ab = self._entries.get(key._replace(c_in=c0, out=o0))
                if a is not None and b is not None and ab is not None:
                    return max(a + b - ab, 0.5 * min(a, b))
        return value

    def _head_at(self, key: EntryKey) -> float | None:
        """A head as timed for its classes, else derived from another class count."""
        value = self._entries.get(key)
        return value if value is not None else self._other_classes(key)

    def _other_classes(self, key: EntryKey) -> float | None:
        """head(c, w, k) = head(c, w, k0) - classifier(w, k0) + classifier(w, k)."""
        for k0 in self._seed_classes:
            head = self._entries.get(key._replace(out=k0))
            old = self.entry_ms(classifier_key(key.exp, k0))
            new = self.entry_ms(classifier_key(key.exp, key.out))
            if head is not None and old is not None and new is not None:
                # Lower bound: the head holds the new classifier. (A guard of half the
                # head bound here and inflated 10-class heads: measured head(10) /
                # head(1000) is 0.31 on local-ref.)
                return max(head - old + new, new)
        return None

    def calibration(self, spec: NetworkSpec) -> tuple[float, float, float]:
        """(factor, boundary, per_entry) of the spec's seed structure: prediction =
        factor x (entries - boundary x M input elements - per_entry x entry count).
        boundary and per_entry are what an entry timed alone pays beyond its share in
        the network (calibrate.fit_calibration; 0 for tables calibrated before them)."""
        sig = signature(spec)
        if sig not in self._calibration:
            return self._default_calibration
        return self._calibration[sig], self._boundary[sig], self._per_entry[sig]

    def _entry_list(self, spec: NetworkSpec) -> list[tuple[str, float]]:
        values = []
        for name, key in entry_keys(spec):
            ms = self.entry_ms(key)
            if ms is None:
                raise LatencyError(_missing_message(self, spec, name, key))
            values.append((name, ms))
        return values

    def predict_ms(self, spec: NetworkSpec) -> float:
        """Predicted latency of ``spec`` in ms (calibrated sum of its entries)."""
        cached = self._specs.get(spec)
        if cached is not None:
            return cached
        if not isinstance(spec.head, ClassifierHead):  # few specs: no per-layer cache
            entries = self._entry_list(spec)
            return self._remember(spec, sum(ms for _, ms in entries),
                                  input_elements_m(spec), len(entries))
        layers = self._layers
        total = elements = 0.0
        count = 0
        # walk() and not spec.layers: rows cached on the thousands of specs the search
        # scores kept the garbage collector busy (7,800 predictions/s, 18,000 without)
        for layer in spec.__dict__.get("layers") or walk(spec):  # a lookup per layer
            row = layers.get(layer)
            if row is None:
                key = entry_key(layer)
                ms = self.entry_ms(key)
                if ms is None:
                    self._entry_list(spec)  # raises, naming the layer and the fix
                    raise AssertionError("unreachable")
                row = layers[layer] = (ms, entry_input_m(key))
            total += row[0]
            elements += row[1]
            count += 1
        return self._remember(spec, total, elements, count)

    def _remember(self, spec: NetworkSpec, entries_ms: float, elements_m: float,
                  entries: int) -> float:
        structure = _structure(spec)
        calibration = self._factors.get(structure)
        if calibration is None:
            calibration = self._factors[structure] = self.calibration(spec)
        if len(self._specs) > 200_000:
            self._specs.clear()
        factor, boundary, per_entry = calibration
        total = self._specs[spec] = factor * (entries_ms - boundary * elements_m
                                              - per_entry * entries)
        return total

    def breakdown_ms(self, spec: NetworkSpec) -> list[tuple[str, float]]:
        """(layer name, calibrated ms) per entry; the values sum to ``predict_ms``."""
        f, b, per_entry = self.calibration(spec)
        return [(name, f * (ms - b * entry_input_m(key) - per_entry))
                for (name, ms), (_, key) in zip(self._entry_list(spec), entry_keys(spec))]

    def covers(self, spec: NetworkSpec) -> bool:
        """Whether every entry of ``spec`` can be looked up (predict_ms will not raise)."""
        try:
            return all(self.entry_ms(key) is not None for _, key in entry_keys(spec))
        except NetadaptError:
            return False

    def missing(self, spec: NetworkSpec) -> list[tuple[str, EntryKey]]:
        """(layer name, entry) of every entry of ``spec`` the table lacks."""
        return [(n, k) for n, k in entry_keys(spec) if self.entry_ms(k) is None]

    def label(self) -> str:
        """The device and how its table was made, for reports (ESTIMATE said so)."""
        m = self.meta
        rt = m.get("runtime", {})
        if self.is_estimate:
            how = m.get("estimate_summary") or (f"{m.get('estimate_of', '?')} measurements "
                                                f"fitted to published latencies")
            return (f"{self.device} (ESTIMATE: {m.get('description', '?')}; {how}, "
                    f"{m.get('date', '?')[:10]})")
        return (f"{self.device} ({m.get('cpu', '?')}, {rt.get('threads', '?')} thread(s), "
                f"onnxruntime {rt.get('onnxruntime', '?')}, {m.get('date', '?')[:10]})")


def _missing_message(table: LatencyTable, spec: NetworkSpec, name: str, key: EntryKey) -> str:
    """Which entry a table lacks for ``spec``, and the command that adds it."""
    if table.is_estimate:
        source = table.meta.get("estimate_of", "local-ref")
        fix = (f"netadapt profile --device {source} --spec SEED.yaml, then netadapt "
               f"profile --device {table.device} --estimate-from {source}")
    else:
        fix = f"netadapt profile --device {table.device} --spec SEED.yaml"
    h, w = spec.input_size
    if h == w and all(s.input_size != (h, w) or s.name in table._multiplier_seeds
                      for s in table._seeds):
        fix = fix.replace("SEED.yaml", f"SEED.yaml --input-size {h}", 1)
    seeds = ", ".join(s.name for s in table._seeds) or "none"
    return (f"latency table {table.device!r} has no entry for {spec.name} {name} "
            f"({key.label()}); it covers seeds {seeds}; add it with: {fix} "
            f"(SEED.yaml: the spec this one was reduced from)")


# ---------------------------------------------------------------------- files
# The rows are gzipped CSV (a Large table compresses 6x: most of a row repeats its
# neighbour); ``table.csv`` is read too (tables written before). meta.json's sha256 is
# the CSV text's either way.
TABLE_FILE, LEGACY_TABLE_FILE = "table.csv.gz", "table.csv"


def _interpolated_classes(entries: dict[EntryKey, float], key: EntryKey) -> float | None:
    """A classifier Gemm for a class count not timed: linear between the two timed
    counts around it (at the same width)."""
    known = sorted((k.out, ms) for k, ms in entries.items()
                   if k.kind == "classifier" and k.c_in == key.c_in)
    if len(known) < 2:
        return None
    ks = [k for k, _ in known]
    i = min(max(1, int(np.searchsorted(ks, key.out))), len(ks) - 1)
    (k0, m0), (k1, m1) = known[i - 1], known[i]
    return max(m0 + (m1 - m0) * (key.out - k0) / (k1 - k0), 0.0)


KEY_INDEX = {name: i for i, name in enumerate(EntryKey._fields)}

# kind -> the windows of widths (field, step) over which its entries are priced as a
# median (_width_window_median), in turn. A block's cost steps with its expansion's
# alignment (a multiple of 16 ~4.5% under its two neighbours, an odd multiple of 8 ~4%
# over, on two 64 px tables alike), so its window keeps to its phase; a head's Gemms do
# not step with either width (within 1.5%).
SMOOTHED: dict[str, tuple[tuple[str, int], ...]] = {
    "head": (("exp", WIDTH_STEP), ("c_in", WIDTH_STEP)),
    "block": (("exp", 2 * WIDTH_STEP),),
    "last_conv": (("out", 2 * WIDTH_STEP),),
}


def _width_window_median(price: Callable[[EntryKey], float | None], key: EntryKey,
                         field: str, step: int) -> float | None:
    """An entry's ms: the median of ``price`` over the widest symmetric window of widths
    ``field`` +- step, +- 2 step that it prices; None where it does not price the
    entry's own.

    One timing of a small entry scatters (two tables built one after the other: block
    entries at 64 px differ by a median 3.6%, by over 15% one time in twenty), a derived
    head, a difference of two timed Gemms, 2-4x more; and a search picks exactly the
    widths where a timing came out low: a cut head.width 1280 -> 904 was priced at 19%
    of the seed's latency and saved 3%, a cut blocks[11].exp 672 -> 232 at 9.1% and
    saved 5.6% (docs/latency.md). On a trend the median of a symmetric window is the
    entry's own timing; a lone outlier is dropped."""
    own = price(key)
    if own is None:
        return None
    values = [own]
    i = KEY_INDEX[field]
    head, width, tail = key[:i], int(key[i]), key[i + 1:]
    for d in (step, 2 * step):
        # tuple.__new__, not _replace: a first prediction resolves thousands of windows
        below, above = (price(tuple.__new__(EntryKey, (*head, width + s, *tail)))
                        for s in (-d, d))
        if below is None or above is None:
            break
        values += [below, above]
    return sorted(values)[len(values) // 2]  # odd count: the median (np.median: 10x slower)


def table_paths(device: str, root: Path | None = None) -> tuple[Path, Path]:
    """Where DEVICE's table is written (``table.csv.gz``, ``meta.json``)."""
    folder = tables_dir(root) / device
    return folder / TABLE_FILE, folder / "meta.json"


def find_table(device: str, root: Path | None = None) -> tuple[Path, Path] | None:
    """Where DEVICE's table is read from: the user's own, else the shipped one."""
    for base in search_roots(root):
        folder = base / "latency_tables" / device
        if (folder / "meta.json").is_file():
            rows = folder / TABLE_FILE
            legacy = folder / LEGACY_TABLE_FILE
            return (legacy if legacy.is_file() and not rows.is_file() else rows,
                    folder / "meta.json")
    return None


def is_estimate_table(device: str, root: Path | None = None) -> bool:
    """Whether DEVICE's table (the user's own, else the shipped one) is an ESTIMATE,
    read from its meta.json alone; False where there is none or it cannot be read."""
    found = find_table(device, root)
    try:
        return found is not None and bool(
            json.loads(found[1].read_text(encoding="utf-8")).get("estimate", False))
    except (OSError, ValueError, AttributeError):
        return False


def table_bytes(text: str) -> bytes:
    """The table file's bytes for its CSV text (gzip without a timestamp: the same rows
    give the same file)."""
    return gzip.compress(text.encode("utf-8"), mtime=0)


def read_table_files(device: str, root: Path | None = None
                     ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table's rows and metadata, checked (the CSV's hash must match meta.json)."""
    csv_path, meta_path = find_table(device, root) or table_paths(device, root)
    rebuild = f"rebuild it with: netadapt profile --device {device}"
    if not meta_path.is_file() or not csv_path.is_file():
        raise LatencyError(f"no latency table for device {device!r} in {csv_path.parent}; "
                           f"build it with: netadapt profile --device {device}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = csv_path.read_bytes()
        if csv_path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile) as exc:
        raise LatencyError(f"{meta_path}: unreadable ({exc}); {rebuild}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LatencyError(f"{meta_path}: not a format-{FORMAT} table; {rebuild}")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise LatencyError(f"{csv_path}: contents do not match meta.json (truncated, edited "
                           f"or corrupt); {rebuild}, or restore it (git checkout "
                           f"latency_tables/{device})")
    try:
        frame = _read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError) as exc:
        raise LatencyError(f"{csv_path}: corrupt ({exc}); {rebuild}") from None
    if len(frame) != meta.get("rows"):
        raise LatencyError(f"{csv_path}: {len(frame)} rows, meta.json says {meta.get('rows')}; "
                           f"{rebuild}")
    return frame, meta


def keys_of(frame: pd.DataFrame) -> list[EntryKey]:
    """The key of every row of a frame with the KEY_COLUMNS (a table's, a journal's)."""
    n = len(frame)
    columns = [frame[f].astype(FIELD_TYPES[f]).tolist() if f in KEY_COLUMNS else [blank] * n
               for f, blank in zip(EntryKey._fields, BLANK)]
    return [EntryKey._make(values) for values in zip(*columns)]


def entries_of(frame: pd.DataFrame) -> dict[EntryKey, float]:
    """A table frame's entries: key -> ms."""
    return dict(zip(keys_of(frame), frame["ms"].astype(float).tolist()))


def write_table(device: str, frame: pd.DataFrame, meta: dict[str, Any],
                root: Path | None = None) -> None:
    """Write DEVICE's table (table_paths): the rows, then meta.json with their count and
    the CSV text's sha256, each file replaced atomically."""
    csv_path, meta_path = table_paths(device, root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = frame_to_csv(frame)
    meta = {**meta, "rows": len(frame),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_bytes_atomic(csv_path, table_bytes(text))
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    (csv_path.parent / LEGACY_TABLE_FILE).unlink(missing_ok=True)  # replaced by the above


def load_table(device: str, root: Path | None = None, check_runtime: bool = True
               ) -> LatencyTable:
    """Read latency_tables/DEVICE; LatencyError if missing, corrupt or for another
    onnxruntime version (tables measured here must match the installed runtime)."""
    from .devices import load_device

    load_device(device, root)  # unknown device: say which exist
    frame, meta = read_table_files(device, root)
    if check_runtime and meta.get("runner") == "local" and not meta.get("estimate"):
        from .measure import ort

        version = meta.get("runtime", {}).get("onnxruntime")
        if version != ort.__version__:
            raise LatencyError(
                f"latency table {device!r} was measured with onnxruntime {version}, this "
                f"environment has {ort.__version__}; rebuild it with: netadapt profile "
                f"--device {device} --fresh")
    return LatencyTable(device, entries_of(frame), meta)
