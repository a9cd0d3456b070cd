"""The text column of table-shaped corpora, one batch of rows at a time.

- Parquet files (FineWeb, SlimPajama, RedPajama ship as these): read with pyarrow one
  row group at a time, only the text column, so memory stays flat for any file size.
- Folders written by `datasets`' save_to_disk: Arrow stream files listed in state.json,
  read with pyarrow (no `datasets` needed) one record batch at a time.
- hf:NAME[:CONFIG]: a Hugging Face dataset streamed through `datasets` (optional).

Each batch is a list of values: str, None for a null, or bytes when the batch holds
invalid UTF-8 (corpus.py decodes those with its replacement rule), and how far through
the source the batch ends (a fraction, or None for a stream of unknown length).
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from errors import BadInput, MissingDependency, NotFound

HF_PREFIX = "hf:"
SAVED_STATE, SAVED_DICT = "state.json", "dataset_dict.json"  # what save_to_disk writes
TEXT_TYPES = ("string", "large_string", "string_view")  # Arrow's names, and datasets' dtypes
BATCH_ROWS = 1024  # rows per batch within a row group: bounds the Python strings alive at once


def one_line(e: Exception) -> str:
    """An exception's message on one line (pyarrow's and datasets' may span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- the text column


def check_text_column(schema: dict, text_field: str, where: str):
    """Refuse a source whose text_field is missing or not text; schema: {column: type name}."""
    if text_field not in schema:
        raise BadInput(
            f"{where} has no column {text_field!r} (its columns: {list(schema)[:20]}); "
            f"pass --text_field NAME to read another column"
        )
    if schema[text_field] not in TEXT_TYPES:
        text_columns = [name for name, kind in schema.items() if kind in TEXT_TYPES]
        raise BadInput(
            f"{where}: column {text_field!r} is {schema[text_field]}, not a string; "
            f"pass --text_field NAME of a string column (string columns: {text_columns[:20]})"
        )


def _arrow_schema(schema: pa.Schema) -> dict:
    return {field.name: str(field.type) for field in schema}


def _values(array: pa.Array) -> list:
    """Python values of a text column; bytes throughout when the batch holds invalid UTF-8
    (Arrow does not validate strings read from a file, Python does)."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        return array.cast(pa.large_binary()).to_pylist()


# ---------------------------------------------------------------- Parquet


def open_parquet(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise BadInput(
            f"{path} is not a readable Parquet file ({one_line(e)}); re-download or rewrite it"
        ) from None


def check_parquet(path: str, text_field: str):
    """Footer only: a corrupt file or a wrong column fails before any tokenizing."""
    check_text_column(_arrow_schema(open_parquet(path).schema_arrow), text_field, path)


def _parquet_batches(pf: pq.ParquetFile, text_field: str):
    rows, done = max(pf.metadata.num_rows, 1), 0
    for group in range(pf.num_row_groups):  # one row group in memory at a time
        for batch in pf.iter_batches(BATCH_ROWS, row_groups=[group], columns=[text_field], use_threads=False):
            done += batch.num_rows
            yield _values(batch.column(0)), done / rows


# ---------------------------------------------------------------- save_to_disk folders


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON ({one_line(e)}); save the dataset again") from None
    if not isinstance(obj, dict):
        raise BadInput(
            f"{path} holds a JSON {type(obj).__name__}, not the object save_to_disk writes; "
            f"save the dataset again"
        )
    return obj


def saved_dataset_files(folder: str, split: str) -> list | None:
    """The Arrow files of a folder written by save_to_disk, in the dataset's row order
    (a DatasetDict's `split`); None for any other folder."""
    if os.path.isfile(os.path.join(folder, SAVED_DICT)):
        splits = _read_json(os.path.join(folder, SAVED_DICT)).get("splits", [])
        if split not in splits:
            raise BadInput(
                f"{folder} is a DatasetDict saved with save_to_disk and has no split "
                f"{split!r}; pass --split with one of {splits}"
            )
        return saved_dataset_files(os.path.join(folder, split), split) or []
    state = os.path.join(folder, SAVED_STATE)
    if not os.path.isfile(state):
        return None
    entries = _read_json(state).get("_data_files")
    names = [e.get("filename") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    if not names or not all(isinstance(name, str) for name in names):
        raise BadInput(f"{state} lists no _data_files; is {folder} a folder written by save_to_disk?")
    files = [os.path.join(folder, name) for name in names]
    for path in files:
        if not os.path.isfile(path):
            raise NotFound(f"{path}, listed in {state}, is missing; save the dataset again")
    return files


def _open_arrow(path: str):
    """(the file, its stream reader): plain reads, so no mapping of the file stays resident."""
    source = pa.OSFile(path)
    try:
        return source, pa.ipc.open_stream(source)
    except (pa.ArrowException, OSError) as e:
        source.close()
        raise BadInput(
            f"{path} is not a readable Arrow stream file ({one_line(e)}); save the dataset again"
        ) from None


def check_arrow(path: str, text_field: str):
    source, reader = _open_arrow(path)
    with source:
        check_text_column(_arrow_schema(reader.schema), text_field, path)


def _arrow_batches(path: str, source, reader, text_field: str):
    size = max(os.path.getsize(path), 1)
    column = reader.schema.get_field_index(text_field)
    with source:
        for batch in reader:  # save_to_disk writes batches of 1,000 rows
            for start in range(0, batch.num_rows, BATCH_ROWS):
                yield _values(batch.column(column).slice(start, BATCH_ROWS)), source.tell() / size


# ---------------------------------------------------------------- Hugging Face datasets


def parse_hf(spec: str) -> tuple:
    """hf:NAME[:CONFIG] -> (NAME, CONFIG or None)."""
    name, _, config = spec[len(HF_PREFIX) :].partition(":")
    if not name:
        raise BadInput(f"--input {spec!r} names no dataset; write hf:NAME or hf:NAME:CONFIG")
    return name, config or None


def _open_hf(spec: str, split: str, text_field: str):
    try:
        import datasets
    except ImportError:
        raise MissingDependency(
            f"--input {spec} streams through the datasets package: pip install datasets"
        ) from None
    name, config = parse_hf(spec)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # offline, unknown name, config or split: all one line
        raise BadInput(
            f"cannot load Hugging Face dataset {spec} (split {split!r}): {one_line(e)}; "
            f"check the name, the config (hf:NAME:CONFIG), --split and the network"
        ) from None
    where = f"{spec} (split {split!r})"
    if ds.features is not None:
        schema = {key: getattr(f, "dtype", type(f).__name__) for key, f in ds.features.items()}
    else:  # a stream that knows its columns only from its rows
        first = next(iter(ds), {})
        schema = {key: "string" if isinstance(v, str) else type(v).__name__ for key, v in first.items()}
    check_text_column(schema, text_field, where)
    return ds.select_columns([text_field])


def _hf_batches(ds, text_field: str):
    for batch in ds.iter(batch_size=BATCH_ROWS):
        yield batch[text_field], None


# ---------------------------------------------------------------- dispatch

KINDS = ("parquet", "arrow", "hf")


def check_table(kind: str, path: str, split: str, text_field: str):
    """Fail in a second, not an hour in: an unreadable source or a wrong column."""
    if kind == "parquet":
        check_parquet(path, text_field)
    elif kind == "arrow":
        check_arrow(path, text_field)
    else:
        _open_hf(path, split, text_field)


def table_batches(kind: str, path: str, split: str, text_field: str):
    """(values, fraction of the source read or None) for each batch of rows of one source."""
    if kind == "parquet":
        batches = _parquet_batches(open_parquet(path), text_field)
    elif kind == "arrow":
        batches = _arrow_batches(path, *_open_arrow(path), text_field)
    else:
        batches = _hf_batches(_open_hf(path, split, text_field), text_field)
    try:
        yield from batches
    except Exception as e:  # a damaged page, a truncated file, a dropped connection
        raise BadInput(
            f"cannot read {path}: {one_line(e)}; the source is damaged or unreachable "
            f"(download or save it again)"
        ) from None
