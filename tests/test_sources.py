"""Tests for pipeline.data.sources: listing directories, globs, files and manifests
locally, over a loopback S3 server (moto) and over loopback HTTP."""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import pickle
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.images import decode_image
from pipeline.data.rows import InputError, InputRow
from pipeline.data.sources import list_inputs
from pipeline.data.storage import (
    IMAGE_EXTENSIONS,
    default_storage_options,
    is_image_path,
    read_bytes,
    resolve_storage_options,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir())
JPEG = (SAMPLES / "jpeg_321x345.jpg").read_bytes()
PNG = (SAMPLES / "grayscale_372x186.png").read_bytes()


def write(path: Path, data: bytes | str = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_jsonl(path: Path, records: list[dict], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    return write(path, sep.join(json.dumps(r) for r in records) + "\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory with images at several depths, mixed-case extensions and junk."""
    root = tmp_path / "imgs"
    write(root / "a.jpg")
    write(root / "B.PNG", PNG)
    write(root / "sub" / "a.jpg")
    write(root / "sub" / "c.webp")
    write(root / "sub" / "deeper" / "d.gif")
    write(root / "notes.txt", "not an image")
    write(root / "meta.parquet", b"PAR1")
    write(root / "._a.jpg", b"\x00\x05\x16\x07")  # macOS AppleDouble junk
    write(root / ".cache" / "copy.jpg")
    return root


# --------------------------------------------------------------------------- #
# helpers and constants
# --------------------------------------------------------------------------- #


def test_image_extensions_and_case_insensitive_matching():
    assert {e.lstrip(".") for e in IMAGE_EXTENSIONS} == {"jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp"}
    assert is_image_path("/x/Y.JPG") and is_image_path("s3://b/k.TiFf")
    assert is_image_path("https://h/p/img.jpeg?X-Amz-Signature=abc")
    assert not is_image_path("/x/y.txt") and not is_image_path("/x/jpg")


def test_default_storage_options_reads_standard_env(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert default_storage_options("s3://b/k") == {"endpoint_url": "http://127.0.0.1:1"}
    assert default_storage_options("/local/path") == {}
    assert default_storage_options("gs://b/k") == {}
    # explicit options win; an explicit client_kwargs endpoint suppresses the env one
    assert resolve_storage_options("s3://b", {"anon": True}) == {"endpoint_url": "http://127.0.0.1:1", "anon": True}
    explicit = {"client_kwargs": {"endpoint_url": "http://x:9"}}
    assert resolve_storage_options("s3://b", explicit) == explicit
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")  # service-specific wins
    assert default_storage_options("s3://b/k") == {"endpoint_url": "http://127.0.0.1:2"}
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert default_storage_options("s3://b/k") == {}


# --------------------------------------------------------------------------- #
# local: directories, globs, single files
# --------------------------------------------------------------------------- #


def test_directory_listing_is_recursive_filtered_sorted_unique(tree: Path):
    rows = list_inputs(str(tree))
    assert [r.id for r in rows] == ["B.PNG", "a.jpg", "sub/a.jpg", "sub/c.webp", "sub/deeper/d.gif"]
    assert [r.path for r in rows] == [str(tree / r.id) for r in rows]
    assert len({r.id for r in rows}) == len(rows)
    assert all(r.image_bytes is None and r.prompt is None for r in rows)
    # deterministic
    assert list_inputs(str(tree) + "/") == rows


def test_directory_listing_with_file_url_and_limit(tree: Path):
    rows = list_inputs(tree.as_uri(), limit=2)
    assert [r.id for r in rows] == ["B.PNG", "a.jpg"]
    assert rows[1].path == (tree / "a.jpg").as_uri()
    assert read_bytes(rows[1].path) == JPEG


def test_relative_local_path(tree: Path, monkeypatch):
    monkeypatch.chdir(tree.parent)
    rows = list_inputs("imgs/sub")
    assert [r.id for r in rows] == ["a.jpg", "c.webp", "deeper/d.gif"]
    assert rows[0].path == str(tree / "sub" / "a.jpg")


def test_recursive_glob(tree: Path):
    rows = list_inputs(f"{tree}/**/*.jpg")
    assert [r.id for r in rows] == ["a.jpg", "sub/a.jpg"]  # hidden ._a.jpg and .cache skipped


def test_glob_in_subdirectory_ids_relative_to_fixed_prefix(tree: Path):
    rows = list_inputs(f"{tree}/sub/*")
    assert [r.id for r in rows] == ["a.jpg", "c.webp"]
    assert rows[1].path == str(tree / "sub" / "c.webp")


def test_bracket_in_existing_directory_name_is_not_a_glob(tmp_path: Path):
    write(tmp_path / "photos [2020]" / "x.jpg")
    assert [r.id for r in list_inputs(str(tmp_path / "photos [2020]"))] == ["x.jpg"]


def test_single_file(tree: Path):
    (row,) = list_inputs(str(tree / "sub" / "c.webp"))
    assert row == InputRow(id="c.webp", path=str(tree / "sub" / "c.webp"))


def test_bundled_samples_list_and_decode():
    rows = list_inputs(str(SAMPLES))
    assert [r.id for r in rows] == SAMPLE_NAMES
    for row in rows:
        assert decode_image(read_bytes(row.path), source=row.path).mode == "RGB"


# --------------------------------------------------------------------------- #
# local: manifests
# --------------------------------------------------------------------------- #


def test_parquet_manifest_with_relative_and_absolute_paths(tree: Path):
    manifest = tree.parent / "manifests" / "m.parquet"
    manifest.parent.mkdir()
    table = pa.table(
        {
            "image_path": ["../imgs/a.jpg", "../imgs/sub/c.webp", str(tree / "B.PNG"), "./local.png"],
            "prompt": ["Describe.", None, "Caption this.", None],
            "unrelated": [1, 2, 3, 4],
        }
    )
    pq.write_table(table, manifest)
    rows = list_inputs(str(manifest))
    assert [r.path for r in rows] == [
        str(tree / "a.jpg"),
        str(tree / "sub" / "c.webp"),
        str(tree / "B.PNG"),
        str(manifest.parent / "local.png"),
    ]
    # ids derived from the path relative to the manifest's directory
    assert [r.id for r in rows] == ["../imgs/a.jpg", "../imgs/sub/c.webp", str(tree / "B.PNG"), "local.png"]
    assert [r.prompt for r in rows] == ["Describe.", None, "Caption this.", None]
    assert read_bytes(rows[0].path) == JPEG
    assert len(list_inputs(str(manifest), limit=3)) == 3


def test_parquet_manifest_with_ids_and_inline_bytes(tmp_path: Path):
    manifest = tmp_path / "inline.parquet"
    pq.write_table(
        pa.table({"id": [7, 8], "image_bytes": pa.array([JPEG, PNG], pa.binary()), "question": ["q1", "q2"]}),
        manifest,
    )
    rows = list_inputs(manifest.as_uri())
    assert [r.id for r in rows] == ["7", "8"]
    assert rows[0].image_bytes == JPEG and rows[1].image_bytes == PNG
    assert rows[0].path == f"{manifest.as_uri()}#row=0"  # informational only
    assert decode_image(rows[1].image_bytes).size == (372, 186)
    assert rows[1].question == "q2"


def test_parquet_manifest_hf_image_struct(tmp_path: Path):
    manifest = tmp_path / "data" / "train-00000.parquet"
    manifest.parent.mkdir()
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": JPEG, "path": "cat.jpg"}, {"bytes": PNG, "path": None}], image_type)
    pq.write_table(pa.table({"image": images, "answers": [["a cat", "cat"], []]}), manifest)
    rows = list_inputs(str(manifest))
    assert rows[0].image_bytes == JPEG and rows[0].id == "cat.jpg"
    assert rows[0].path == str(manifest.parent / "cat.jpg")
    assert rows[0].answers == ("a cat", "cat")
    assert rows[1].image_bytes == PNG and rows[1].id == "train-00000.parquet:1" and rows[1].answers == ()


def test_jsonl_manifest_with_prompts_questions_answers_choices(tree: Path):
    manifest = write_jsonl(
        tree.parent / "vqa.jsonl",
        [
            {"id": "q1", "image": "imgs/a.jpg", "question": "What shape is red?", "answers": ["circle", "a circle"]},
            {"image": "imgs/sub/c.webp", "prompt": "Describe the image.", "extra": {"nested": True}},
            {"id": "q3", "url": "https://example.com/x.jpg", "question": "Pick one", "choices": ["A", "B", 3]},
            {"file": "imgs/a.jpg", "answers": "circle"},  # same image again, no id
            {"path": "imgs/a.jpg"},  # and again
        ],
        blank_lines=True,
    )
    rows = list_inputs(str(manifest))
    assert [r.id for r in rows] == ["q1", "imgs/sub/c.webp", "q3", "imgs/a.jpg", "imgs/a.jpg#2"]
    assert rows[0] == InputRow(
        id="q1", path=str(tree / "a.jpg"), question="What shape is red?", answers=("circle", "a circle")
    )
    assert rows[1].prompt == "Describe the image." and rows[1].path == str(tree / "sub" / "c.webp")
    assert rows[2].path == "https://example.com/x.jpg" and rows[2].choices == ("A", "B", "3")
    assert rows[3].answers == ("circle",)


def test_json_array_and_gzip_and_base64(tmp_path: Path):
    records = [{"image_bytes": base64.b64encode(JPEG).decode(), "prompt": "p"}]
    write(tmp_path / "a.json", json.dumps(records, indent=2))
    write(tmp_path / "b.jsonl.gz", gzip.compress(b'{"image": "x.png"}\n'))
    (row,) = list_inputs(str(tmp_path / "a.json"))
    assert row.image_bytes == JPEG and row.id == "a.json:0" and row.prompt == "p"
    (row,) = list_inputs(str(tmp_path / "b.jsonl.gz"))
    assert row.path == str(tmp_path / "x.png")


def test_glob_of_manifest_shards(tmp_path: Path):
    for shard in range(2):
        write_jsonl(tmp_path / "shards" / f"part-{shard}.jsonl", [{"image": f"img{shard}-{i}.jpg"} for i in range(3)])
    rows = list_inputs(f"{tmp_path}/shards/*.jsonl", limit=4)
    assert [r.id for r in rows] == ["img0-0.jpg", "img0-1.jpg", "img0-2.jpg", "img1-0.jpg"]


def test_duplicate_ids_in_manifest_are_disambiguated(tmp_path: Path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"id": "x", "image": "a.jpg"}, {"id": "x", "image": "b.jpg"}, {"id": "x#2", "image": "c.jpg"}]
    )
    ids = [r.id for r in list_inputs(str(manifest))]
    assert len(set(ids)) == 3 and ids[0] == "x" and ids[2] == "x#2"


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


def assert_input_error(uri: str, fragment: str, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        list_inputs(uri, **kwargs)
    message = str(info.value)
    assert uri in message, message
    assert fragment in message, message
    assert isinstance(info.value, ValueError)
    return info.value


def test_error_missing_path(tmp_path: Path):
    error = assert_input_error(str(tmp_path / "nope"), "does not exist")
    assert "check" in error.hint


def test_error_empty_directory(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_input_error(str(tmp_path / "empty"), "directory is empty")


def test_error_directory_without_images(tmp_path: Path):
    write(tmp_path / "d" / "x.txt", "hi")
    write(tmp_path / "d" / "m.parquet", b"PAR1")
    error = assert_input_error(str(tmp_path / "d"), "no images")
    assert ".txt" in str(error) and "manifest" in error.hint


def test_error_unknown_extension(tmp_path: Path):
    write(tmp_path / "data.csv", "image\na.jpg\n")
    error = assert_input_error(str(tmp_path / "data.csv"), "'.csv'")
    assert ".parquet" in str(error) and ".jpg" in str(error)


def test_error_manifest_without_image_column(tmp_path: Path):
    pq.write_table(pa.table({"id": ["a"], "caption": ["c"]}), tmp_path / "m.parquet")
    error = assert_input_error(str(tmp_path / "m.parquet"), "no image column")
    assert "caption" in str(error) and "image_path" in str(error)
    write_jsonl(tmp_path / "m.jsonl", [{"image": "a.jpg"}, {"caption": "c"}])
    assert_input_error(str(tmp_path / "m.jsonl"), "line 2 has no image field")


def test_error_bad_json_line(tmp_path: Path):
    write(tmp_path / "m.jsonl", '{"image": "a.jpg"}\n{"image": \n')
    assert_input_error(str(tmp_path / "m.jsonl"), "line 2 is not valid JSON")


def test_error_empty_image_field_and_empty_manifest(tmp_path: Path):
    write_jsonl(tmp_path / "m.jsonl", [{"image": ""}])
    assert_input_error(str(tmp_path / "m.jsonl"), "empty image field")
    write(tmp_path / "e.jsonl", "\n")
    assert_input_error(str(tmp_path / "e.jsonl"), "no rows")


def test_error_glob_matches_nothing(tmp_path: Path):
    assert_input_error(f"{tmp_path}/*.jpg", "no files match")


def test_error_bad_limit(tree: Path):
    assert_input_error(str(tree), "limit", limit=0)


def test_input_error_pickles_for_ray():
    error = InputError("s3://b/x", "the path does not exist", "check it")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InputError and str(copy) == str(error) and copy.hint == "check it"


# --------------------------------------------------------------------------- #
# S3 (moto server on loopback)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def s3_bucket(s3_server):  # noqa: F811 - pytest fixture injection
    bucket = "hired-sources-test"
    s3_server.upload_dir(bucket, SAMPLES, prefix="imgs")
    s3_server.upload_files(
        bucket,
        {
            "imgs/nested/again.jpg": JPEG,
            "imgs/README.txt": "not an image",
            "manifests/vqa.jsonl": "\n".join(
                json.dumps(r)
                for r in [
                    {"id": "r1", "image": "../imgs/jpeg_321x345.jpg", "question": "How many shapes?", "answers": ["4"]},
                    {"image": "/hired-sources-test/imgs/jpeg_384x192.jpg", "prompt": "Describe."},
                ]
            ),
        },
    )
    table = pa.table({"image_bytes": pa.array([PNG], pa.binary()), "prompt": ["inline"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    s3_server.upload(bucket, "manifests/inline.parquet", sink.getvalue().to_pybytes())
    return bucket


def test_s3fs_honours_aws_endpoint_url_natively(s3_server, s3_bucket):  # noqa: F811
    import s3fs

    # No endpoint passed anywhere: botocore picks up AWS_ENDPOINT_URL by itself.
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.cat_file(f"{s3_bucket}/imgs/jpeg_321x345.jpg") == JPEG
    assert default_storage_options(f"s3://{s3_bucket}") == {"endpoint_url": s3_server.endpoint_url}


def test_s3_directory_listing_and_read_bytes(s3_bucket):
    rows = list_inputs(f"s3://{s3_bucket}/imgs/")
    assert [r.id for r in rows] == sorted(SAMPLE_NAMES + ["nested/again.jpg"])
    assert all(r.path == f"s3://{s3_bucket}/imgs/{r.id}" for r in rows)
    by_id = {r.id: r for r in rows}
    image = decode_image(read_bytes(by_id["exif_rotated_192x543.jpg"].path), source="s3")
    assert image.size == (192, 543)
    assert read_bytes(by_id["nested/again.jpg"].path) == JPEG


def test_s3_glob_and_single_file(s3_bucket):
    rows = list_inputs(f"s3://{s3_bucket}/imgs/*.jpg")
    assert [r.id for r in rows] == ["exif_rotated_192x543.jpg", "jpeg_321x345.jpg", "jpeg_384x192.jpg"]
    rows = list_inputs(f"s3://{s3_bucket}/imgs/**/*.jpg")
    assert "nested/again.jpg" in [r.id for r in rows]
    (row,) = list_inputs(f"s3://{s3_bucket}/imgs/rgba_189x576.png")
    assert row.id == "rgba_189x576.png" and row.path == f"s3://{s3_bucket}/imgs/rgba_189x576.png"


def test_s3_manifests_resolve_relative_paths_on_s3(s3_bucket):
    rows = list_inputs(f"s3://{s3_bucket}/manifests/vqa.jsonl")
    assert rows[0].path == f"s3://{s3_bucket}/imgs/jpeg_321x345.jpg"
    assert rows[0].id == "r1" and rows[0].answers == ("4",)
    assert rows[1].path == f"s3://{s3_bucket}/imgs/jpeg_384x192.jpg"
    assert read_bytes(rows[0].path) == JPEG
    (row,) = list_inputs(f"s3://{s3_bucket}/manifests/inline.parquet")
    assert row.image_bytes == PNG and row.prompt == "inline"


def test_s3_explicit_storage_options_still_work(s3_server, s3_bucket):  # noqa: F811
    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    rows = list_inputs(f"s3://{s3_bucket}/imgs/*.png", storage_options=options)
    assert len(rows) == 3
    assert read_bytes(rows[0].path, storage_options=options) == (SAMPLES / rows[0].id).read_bytes()


def test_s3_missing_prefix_and_new_objects_visible(s3_server, s3_bucket):  # noqa: F811
    assert_input_error(f"s3://{s3_bucket}/nothing-here/", "does not exist")
    assert_input_error(f"s3://{s3_bucket}/late/*.jpg", "no files match")
    s3_server.upload(s3_bucket, "late/new.jpg", JPEG)
    # filesystem instances are reused; their listing cache must not hide new objects
    assert [r.id for r in list_inputs(f"s3://{s3_bucket}/late/*.jpg")] == ["new.jpg"]


# --------------------------------------------------------------------------- #
# HTTP (loopback)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    for name in SAMPLE_NAMES:
        write(root / "img" / name, (SAMPLES / name).read_bytes())
    write_jsonl(root / "lists" / "m.jsonl", [{"image": "../img/jpeg_321x345.jpg", "prompt": "hi"}])

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_single_file_and_manifest(http_root: str):
    (row,) = list_inputs(f"{http_root}/img/jpeg_321x345.jpg")
    assert row.id == "jpeg_321x345.jpg" and row.path == f"{http_root}/img/jpeg_321x345.jpg"
    assert read_bytes(row.path) == JPEG
    (row,) = list_inputs(f"{http_root}/lists/m.jsonl")
    assert row.path == f"{http_root}/img/jpeg_321x345.jpg" and row.prompt == "hi"
    assert_input_error(f"{http_root}/img/missing.jpg", "does not exist")


def test_manifest_label_columns_reach_the_rows(tmp_path):
    """answer and task travel with each row, so evaluation reads the manifest once."""
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": "a.png", "question": "Which?", "choices": ["x", "y"], "answer": 1, "task": "multiple_choice"})
        + "\n"
    )
    (row,) = list_inputs(str(tmp_path / "m.jsonl"))
    assert (row.answer, row.task, row.choices) == ("1", "multiple_choice", ("x", "y"))
