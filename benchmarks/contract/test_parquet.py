"""parquet through the contract, plus what is its own: pyarrow reads each part alone, encoded records are Hugging
Face image structs, row groups are as asked and a read decodes only those it needs, and damaged parts of every
kind (compressed, PNG records) give documented errors only."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage
from storage import codecs
from storage.parquet_store import COMPRESSIONS, HF_IMAGE, ROW_GROUP_BYTES, Part, copy_pixels, records
from storage.testing import HEADROOM, StoreContract, assert_read_match, open_and_read, run_forked
from storage.testing.contract import DOCUMENTED_ERRORS, append_files, damage, encoded_names

IMAGES = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)


class TestParquet(StoreContract):
    backend = "parquet"


def part(store: Path, number: int = 0) -> Path:
    return store / f"part-{number:08d}.parquet"


def test_each_part_is_a_parquet_file_that_pyarrow_reads(tmp_path):
    with storage.open("parquet", tmp_path / "store", "x") as store:
        store.append(IMAGES, [7, 8, 9])
        store.append(IMAGES[::-1], [10, 11, 12])
        store.append(IMAGES[:1, :, :, 0], [13])
    table = pq.read_table(part(tmp_path / "store"))
    layout = json.loads(table.schema.metadata[b"image_layout"])
    assert layout == {"shape": [4, 5, 3], "dtype": "|u1", "encoding": "raw"}
    assert table.schema.field("image").type == pa.binary(4 * 5 * 3)
    assert table.column("label").to_pylist() == [7, 8, 9]
    pixels = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(IMAGES.shape)
    np.testing.assert_array_equal(pixels, IMAGES)
    both = ds.dataset([str(part(tmp_path / "store", n)) for n in (0, 1)], format="parquet").to_table()
    assert both.column("label").to_pylist() == [7, 8, 9, 10, 11, 12]
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == [
        "manifest.json",
        "part-00000000.parquet",
        "part-00000001.parquet",
        "part-00000002.parquet",
        "writer.lock",
    ]


def test_encoded_parts_are_hugging_face_image_structs(tmp_path):
    with storage.open("parquet", tmp_path / "store", "x", encoding="png") as store:
        store.append(IMAGES, [1, 2, 3])
    table = pq.read_table(part(tmp_path / "store"))
    assert table.schema.field("image").type == pa.struct({"bytes": pa.binary(), "path": pa.string()})
    features = json.loads(table.schema.metadata[b"huggingface"])  # what datasets.Features.arrow_schema writes
    assert features == {
        "info": {"features": {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}}
    }
    rows = table.to_pylist()
    assert [row["label"] for row in rows] == [1, 2, 3]
    assert all(row["image"]["path"] is None for row in rows)
    decoded = [codecs.get("png").decode(row["image"]["bytes"]) for row in rows]
    np.testing.assert_array_equal(decoded, IMAGES)
    with storage.open("parquet", tmp_path / "store") as store:
        assert_read_match(store, None, list(IMAGES), [1, 2, 3])
        assert_read_match(store, [2, 0, 2], [IMAGES[2], IMAGES[0], IMAGES[2]], [3, 1, 3])


def test_row_group_size_is_honoured_and_a_read_decodes_only_the_row_groups_it_needs(tmp_path):
    with storage.open("parquet", tmp_path / "store", "x", row_group_size=2) as store:
        store.append(np.zeros((5, 4, 4), np.uint8), range(5))
    assert [group["num_rows"] for group in row_groups(part(tmp_path / "store"))] == [2, 2, 1]
    images = np.random.default_rng(0).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8)
    with storage.open("parquet", tmp_path / "default", "x") as store:
        store.append(images, range(200))
        per_group = ROW_GROUP_BYTES // images[0].nbytes  # the default: about 1 MiB of pixels
        assert [group["num_rows"] for group in row_groups(part(tmp_path / "default"))] == [85, 85, 30]
        assert per_group == 85
        asked = []
        opened = store._handles[0].file
        read_row_groups = opened.read_row_groups
        opened.read_row_groups = lambda groups, **kwargs: asked.append(groups) or read_row_groups(groups, **kwargs)
        assert_read_match(store, [90], [images[90]], [90])
        assert_read_match(store, [199, 3, 4], [images[199], images[3], images[4]], [199, 3, 4])
        assert_read_match(store, slice(80, 90), list(images[80:90]), list(range(80, 90)))
    assert asked == [[1], [0, 2], [0, 1]]


def row_groups(path: Path) -> list[dict]:
    footer = pq.ParquetFile(path).metadata
    return [footer.row_group(group).to_dict() for group in range(footer.num_row_groups)]


def test_a_column_in_several_chunks_reads_as_one():
    """pyarrow hands a read's row groups over as one chunk; more (a huge read) must give the same images."""
    images = np.arange(4 * 6, dtype=np.uint16).reshape(4, 2, 3)
    part = Part(4, (2, 3), np.dtype("<u2"), "raw")
    column = pa.chunked_array(
        [pa.array([image.tobytes() for image in chunk], pa.binary(12)) for chunk in (images[:1], images[1:])]
    )
    out = np.empty((3, 2, 3), np.uint16)
    copy_pixels(column, part, np.array([3, 0, 1]), False, out)
    np.testing.assert_array_equal(out, images[[3, 0, 1]])
    copy_pixels(column, part, np.array([0, 1, 2]), True, out)
    np.testing.assert_array_equal(out, images[:3])
    files = [b"a", b"bc", b"", b"def"]
    chunks = [
        pa.array([{"bytes": file, "path": None} for file in part_files], HF_IMAGE)
        for part_files in (files[:1], files[1:])
    ]
    assert [bytes(record) for record in records(chunks, np.array([3, 0, 1, 2, 0]), Path("part"))] == [
        b"def",
        b"a",
        b"bc",
        b"",
        b"a",
    ]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compressed_parts_read_back_and_say_how_they_are_compressed(tmp_path, compression):
    images = np.zeros((20, 16, 16), np.uint16)
    with storage.open("parquet", tmp_path / "store", "x", compression=compression) as store:
        store.append(images, range(20))
    with storage.open("parquet", tmp_path / "store") as store:
        assert_read_match(store, None, list(images), list(range(20)))
    assert {column["compression"] for group in row_groups(part(tmp_path / "store")) for column in group["columns"]} == {
        compression.upper()
    }


@pytest.mark.parametrize(
    "options",
    [
        {"row_group_size": 0},
        {"row_group_size": -1},
        {"row_group_size": True},
        {"row_group_size": 2.0},
        {"row_group_size": "100"},
        {"compression": "NONE"},
        {"compression": "lzo"},
        {"compression": "ZSTD"},
        {"compression": "zstd", "encoding": "png"},
        {"encoding": "webp"},
    ],
    ids=repr,
)
def test_bad_options_are_refused_and_write_nothing(tmp_path, options):
    with pytest.raises(ValueError, match=r"row_group_size|compression|encoding"):
        storage.open("parquet", tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


def replace_part(store: Path, table: pa.Table) -> None:
    part(store).unlink()
    pq.write_table(table, part(store))


def test_a_part_that_disagrees_with_its_manifest_is_damage(tmp_path):
    """A well-formed Parquet file in place of a part, but with other rows, types or layout: DamagedStoreError."""
    with storage.open("parquet", tmp_path / "template", "x") as store:
        store.append(IMAGES, [1, 2, 3])
    original = pq.read_table(part(tmp_path / "template"))
    metadata = original.schema.metadata
    fewer = original.slice(0, 2)
    other_layout = original.replace_schema_metadata(
        {b"image_layout": json.dumps({"shape": [5, 4, 3], "dtype": "|u1", "encoding": "raw"}).encode()}
    )
    grey = pa.table({"image": pa.array([b"x" * 20] * 3, pa.binary(20)), "label": [1, 2, 3]}).replace_schema_metadata(
        metadata
    )
    nullable = pa.table({"image": original.column("image"), "label": pa.array([1, None, 3], pa.int64())})
    for table in (fewer, other_layout, grey, nullable.replace_schema_metadata(metadata)):
        store_path = tmp_path / "copy"
        shutil.rmtree(store_path, ignore_errors=True)
        shutil.copytree(tmp_path / "template", store_path)
        replace_part(store_path, table)
        with pytest.raises(storage.DamagedStoreError, match=r"part-00000000\.parquet"):
            storage.open("parquet", store_path).read()


def test_a_hugging_face_image_without_bytes_is_damage(tmp_path):
    """datasets allows an image that is only a path to a file; a store's records must hold the file itself."""
    with storage.open("parquet", tmp_path / "store", "x", encoding="png") as store:
        store.append(IMAGES, [1, 2, 3])
    table = pq.read_table(part(tmp_path / "store"))
    structs = table.column("image").combine_chunks()
    files = pa.array([structs.field("bytes")[0].as_py(), None, None], pa.binary())
    paths = pa.array([None, "/etc/passwd", None], pa.string())
    image = pa.StructArray.from_arrays([files, paths], fields=list(structs.type))
    replace_part(tmp_path / "store", table.set_column(0, table.schema.field("image"), image))
    with (
        storage.open("parquet", tmp_path / "store") as store,
        pytest.raises(storage.DamagedStoreError, match="without bytes"),
    ):
        store.read([1])


MIXED_TEMPLATE: dict[Path, Path] = {}  # session's temporary root -> a store of parts of every kind


def mixed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of small parts of every kind: raw, raw compressed with each codec, and PNG records."""
    root = tmp_path_factory.getbasetemp()
    if root not in MIXED_TEMPLATE:
        path = tmp_path_factory.mktemp("parquet-mixed") / "store"
        images = np.arange(3 * 6 * 5 * 3).reshape(3, 6, 5, 3).astype(np.uint8)
        for options in [{}, *({"compression": name} for name in COMPRESSIONS), {"encoding": "png"}]:
            with storage.open("parquet", path, "a", row_group_size=2, **options) as store:
                store.append(images, [-1, 2**40, 7])
        MIXED_TEMPLATE[root] = path
    return MIXED_TEMPLATE[root]


@given(data=st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, *settings.default.suppress_health_check])
def test_damaged_parts_of_every_kind_give_documented_errors_only(tmp_path_factory, data):
    """The contract's damage test, on parts that are compressed or hold PNG records: a forged page header of a
    compressed page must not make pyarrow allocate what it claims, nor crash."""
    template = mixed_template(tmp_path_factory)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "store"
        shutil.copytree(template, path)
        parts = [file for file in storage.backend("parquet").files(path) if file.suffix == ".parquet"]
        done = damage(parts, data)
        outcome = run_forked(lambda: open_and_read("parquet", path), timeout=30, headroom=HEADROOM)
    assert not outcome.timed_out, f"{done}: {outcome.describe()}"
    assert outcome.signal is None, f"{done}: {outcome.describe()}"
    assert outcome.error in (None, *DOCUMENTED_ERRORS), f"{done}: {outcome.describe()}"


@pytest.mark.parametrize("name", encoded_names("parquet"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store", row_group_size=2)  # runs cut into row groups
    parts = sorted((tmp_path / "store").glob("part-*.parquet"))
    assert len(parts) > 1  # one a shape and layout
    stored = [row["bytes"] for part in parts for row in pq.read_table(part).column("image").to_pylist()]
    assert stored == files
