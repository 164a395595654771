"""Hostile inputs to ``clip-gs prepare``, grouped by entry point.

``prepare`` never deletes or overwrites what it did not write (output root, split folders, work
folder, node parts; with and without ``--overwrite``), checks every input before any work, and
refuses malformed captions files, settings records, parts and precomputed embeddings with typed
errors naming the file (and line). The captions reader is fuzzed: every outcome is a table or a
:class:`DatasetError`, within a memory bound.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_gs import save_gaussians
from clip_gs.cli import main
from clip_gs.data.prepare import prepare_dataset
from clip_gs.data.sources import SourceItem, list_sources, read_captions
from clip_gs.data.triplets import SPLITS
from clip_gs.errors import DatasetError
from tests.helpers import PREPARE_SETTINGS, FakeTeacher, peak_bytes, random_cloud

MARKER = ".clip-gs-prepare"
MAX_PEAK_BYTES = 8 << 20
"""Memory a captions file may make the reader allocate beyond its table (the row cap is 1 MiB)."""


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: file bytes, None for folders."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}  # fmt: skip


def plant(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def prepare(out, teacher=None, source="synthetic:3", **kwargs):
    return prepare_dataset(source, out, teacher=teacher or FakeTeacher(), settings=PREPARE_SETTINGS, progress=False, **kwargs)


# ---------------------------------------------------------------------------- prepare_dataset: folders


FOREIGN_OUTPUTS = {
    "root file": {"notes.txt": b"their notes"},
    "train": {"train/index.json": b"{}", "train/chunk-0-0.bin": b"their chunk"},
    "nested val/sub": {"val/sub/keep.txt": b"theirs"},
    "test": {"test/theirs.txt": b"theirs"},
    "failures.jsonl": {"failures.jsonl": b"their log\n"},
    "manifest.json": {"manifest.json": b'{"theirs": true}\n'},
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("layout", list(FOREIGN_OUTPUTS))
def test_an_output_folder_prepare_did_not_write_is_refused_untouched(tmp_path, layout, overwrite):
    out = tmp_path / "out"
    plant(out, FOREIGN_OUTPUTS[layout])
    before = tree(out)
    teacher = FakeTeacher()
    first = next(iter(sorted(FOREIGN_OUTPUTS[layout])))
    with pytest.raises(DatasetError, match=rf"{out}: the output folder holds {first}.*did not write this folder"):
        prepare(out, teacher, overwrite=overwrite)
    assert tree(out) == before and teacher.calls == 0  # nothing removed, nothing added, no work


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("planted", ["train/README", "val/sub/keep.txt", "test/theirs.txt"])
def test_a_split_folder_holding_a_foreign_file_is_never_cleared(tmp_path, planted, overwrite):
    """Also a split with no records (old runs removed such folders whatever they held)."""
    out = tmp_path / "out"
    prepare(out)
    plant(out, {planted: b"theirs"})
    before = tree(out)
    split = planted.split("/")[0]
    teacher = FakeTeacher()
    with pytest.raises(DatasetError, match=rf"{out / split}: holds {planted.partition('/')[2]}, which clip-gs"):
        prepare(out, teacher, overwrite=overwrite)
    assert tree(out) == before and teacher.calls == 0


def test_overwrite_clears_only_what_prepare_wrote(tmp_path):
    out = tmp_path / "out"
    prepare(out)
    plant(out, {"README.md": b"a file beside the dataset", ".work/notes.txt": b"mine"})
    records = sorted(p.name for p in (out / ".work").glob("*/*.blob"))
    with pytest.raises(DatasetError, match=rf"{out / '.work'}: holds notes.txt, which clip-gs prepare did not write"):
        prepare(out, overwrite=True)
    assert sorted(p.name for p in (out / ".work").glob("*/*.blob")) == records  # nothing removed
    (out / ".work" / "notes.txt").unlink()
    redone = prepare(out, overwrite=True)
    assert redone.reused == 0 and redone.succeeded == 3
    assert (out / "README.md").read_bytes() == b"a file beside the dataset"  # never prepare's to remove
    assert (out / MARKER).is_file() and (out / ".work" / MARKER).is_file()


def test_an_output_written_before_markers_existed_resumes_and_is_marked(tmp_path):
    out = tmp_path / "out"
    prepare(out)
    for marker in (out / MARKER, out / ".work" / MARKER):
        marker.unlink()  # as a run of an earlier version left it: a manifest and a settings record
    again = prepare(out)
    assert again.reused == 3 and (out / MARKER).is_file() and (out / ".work" / MARKER).is_file()
    (out / MARKER).write_text("not the marker")  # a file of that name is no marker; the manifest still is evidence
    assert prepare(out).reused == 3


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
def test_a_work_dir_prepare_did_not_write_is_refused_untouched(tmp_path, overwrite):
    work = tmp_path / "mine"
    plant(work, {"thesis.tex": b"years of work", "data/results.csv": b"1,2\n"})
    before = tree(work)
    teacher = FakeTeacher()
    with pytest.raises(DatasetError, match=rf"{work}: the work folder holds data/results.csv"):
        prepare(tmp_path / "out", teacher, work_dir=work, overwrite=overwrite)
    assert tree(work) == before and teacher.calls == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["out", "work_dir"])
def test_an_output_or_work_dir_that_is_a_file_is_refused(tmp_path, what):
    path = tmp_path / "a-file"
    path.write_bytes(b"theirs")
    kwargs = {"work_dir": path} if what == "work_dir" else {}
    with pytest.raises(DatasetError, match=rf"{path}: the (output|work) folder is not a folder"):
        prepare(path if what == "out" else tmp_path / "out", **kwargs)
    assert path.read_bytes() == b"theirs"


# ---------------------------------------------------------------------------- prepare_dataset: records


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"source": "synthetic:3"}', b"[" * 100_000],
    ids=["not-json", "a-list", "no-teacher", "deep"],
)
def test_a_corrupt_settings_record_is_refused_naming_it(tmp_path, body):
    out = tmp_path / "out"
    prepare(out)
    recorded = out / ".work" / "settings.json"
    recorded.write_bytes(body)
    with pytest.raises(DatasetError, match=rf"{recorded}: (a corrupt settings record|not a clip-gs prepare settings)"):
        prepare(out)
    assert prepare(out, overwrite=True).succeeded == 3  # --overwrite starts afresh


def test_a_settings_record_with_a_wrong_type_is_refused_naming_the_field(tmp_path):
    out = tmp_path / "out"
    prepare(out)
    recorded = out / ".work" / "settings.json"
    value = json.loads(recorded.read_bytes())
    recorded.write_text(json.dumps(value | {"image_size": "24"}))
    with pytest.raises(DatasetError, match=rf"{recorded}: not a clip-gs prepare settings record: image_size is a str"):
        prepare(out)


def test_two_inputs_of_one_id_are_refused_before_any_work(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_gaussians(random_cloud(200, seed=0), src / "x.ply")
    save_gaussians(random_cloud(200, seed=1), src / "x.splat")
    save_gaussians(random_cloud(200, seed=2), src / "y.ply")
    teacher = FakeTeacher()
    with pytest.raises(DatasetError, match=rf"{src / 'x.ply'} and {src / 'x.splat'} are both object 'x'"):
        prepare(tmp_path / "out", teacher, source=str(src))
    assert teacher.calls == 0 and not (tmp_path / "out").exists()


def test_a_missing_captions_file_is_refused_naming_it(tmp_path):
    teacher = FakeTeacher()
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DatasetError, match=rf"{missing}: cannot open"):
        prepare(tmp_path / "out", teacher, captions=missing)
    assert teacher.calls == 0 and not (tmp_path / "out").exists()


def test_a_label_that_is_a_number_is_refused_before_any_work(tmp_path):
    """Such a label once failed only at the end, after every object was embedded, leaving no shards."""
    captions = tmp_path / "c.jsonl"
    rows = [
        {"id": f"synthetic-{i:06d}", "caption": "a shape", "label": label} for i, label in enumerate(["cup", 7, "mug"])
    ]
    captions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    teacher = FakeTeacher()
    with pytest.raises(DatasetError, match=rf"{captions}: line 2, row 2: label must be a non-empty text.*int 7"):
        prepare(tmp_path / "out", teacher, captions=captions)
    assert teacher.calls == 0 and not (tmp_path / "out").exists()


def test_the_cli_refuses_to_overwrite_a_work_dir_it_did_not_write(tmp_path, monkeypatch, capsys):
    import clip_gs.teachers

    monkeypatch.setattr(clip_gs.teachers, "load_teacher", lambda spec, **kwargs: FakeTeacher())
    work = tmp_path / "home"
    plant(work, {"photos/cat.jpg": b"\xff\xd8 a cat"})
    args = ["prepare", "synthetic:2", "--out", str(tmp_path / "out"), "--work-dir", str(work), "--overwrite",
            "--views", "1", "--synthetic-gaussians", "128", "--quiet", "--teacher", "x"]  # fmt: skip
    assert main(args) == 2
    assert f"{work}: the work folder holds photos/cat.jpg" in capsys.readouterr().err
    assert (work / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8 a cat"


# ---------------------------------------------------------------------------- write_split (clip_gs.data.shards)


def test_write_split_refuses_a_file_and_names_what_a_folder_holds(tmp_path):
    from clip_gs.data.shards import write_split

    path = tmp_path / "split"
    path.write_bytes(b"theirs")
    with pytest.raises(DatasetError, match=rf"{path}: not a folder"):
        write_split([], path)
    path.unlink()
    plant(path, {"b.txt": b"theirs", "a.txt": b"theirs"})
    with pytest.raises(DatasetError, match=rf"{path}: folder is not empty \(holds a.txt\)"):
        write_split([], path)
    assert tree(path) == {"a.txt": b"theirs", "b.txt": b"theirs"}


# ---------------------------------------------------------------------------- captions (read_captions, list_sources)


def test_a_huge_caption_field_is_refused_naming_the_line_in_bounded_memory(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b'id,caption\na,a chair\nb,"' + b"x" * 50_000_000 + b'"\n')

    def refused():
        with pytest.raises(DatasetError, match=rf"{path}: line 3: a row longer than 1,048,576 bytes"):
            read_captions(path)

    _, peak = peak_bytes(refused)
    assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
    # a field over csv's limit, across lines (within the row cap)
    path.write_text('id,caption\na,"' + "many words\n" * 20_000 + '"\n')
    with pytest.raises(DatasetError, match=rf"{path}: line \d+: not valid CSV: field larger than field limit"):
        read_captions(path)


BAD_JSONL = {
    "number": "5",
    "list": "[1, 2]",
    "text": '"a caption"',
    "null": "null",
    "id-number": '{"id": 5, "caption": "x"}',
    "caption-number": '{"id": "b", "caption": 5}',
    "captions-with-number": '{"id": "b", "captions": ["x", 3]}',
    "label-number": '{"id": "b", "caption": "x", "label": 7}',
    "unknown-field": '{"id": "b", "caption": "x", "colour": "red"}',
    "two-keys": '{"id": "b", "uid": "c", "caption": "x"}',
    "field-twice": '{"id": "b", "id": "c", "caption": "x"}',
    "caption-and-captions": '{"id": "b", "caption": "x", "captions": ["y"]}',
    "empty-caption": '{"id": "b", "caption": "a chair|"}',
    "too-many-captions": json.dumps({"id": "b", "captions": ["x"] * 257}),
    "deep": "[" * 100_000,
}


@pytest.mark.parametrize("line", list(BAD_JSONL.values()), ids=list(BAD_JSONL))
def test_a_jsonl_row_that_is_not_a_caption_row_is_refused_naming_the_line(tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "caption": "a chair"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=rf"{path}: line 2"):
        read_captions(path)


BAD_CSV = {
    "unknown-column": "id,caption,score\na,x,1\n",
    "two-key-columns": "id,uid,caption\na,b,x\n",
    "short-row": "id,caption,label\na,x\n",
    "text-after-quotes": 'id,caption\na,"x"y\n',
    "header-without-caption": "id,text\na,x\n",
}


@pytest.mark.parametrize("text", list(BAD_CSV.values()), ids=list(BAD_CSV))
def test_a_csv_row_that_is_not_a_caption_row_is_refused_naming_the_line(tmp_path, text):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"{path}: line [12]"):
        read_captions(path)


@pytest.mark.parametrize(
    ("name", "text", "lines"),
    [
        ("c.csv", "id,caption\na,x\nb,y\na,z\n", (2, 4)),
        ("cap3d.csv", "a,x\nb,y\na,z\n", (1, 3)),
        (
            "c.jsonl",
            '{"id": "a", "caption": "x"}\n{"id": "b", "caption": "y"}\n\n{"id": "a", "caption": "z"}\n',
            (1, 4),
        ),
    ],
)
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, name, text, lines):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"{path}: lines {lines[0]} and {lines[1]} both caption 'a'; give one row"):
        read_captions(path)


def test_two_rows_matching_one_object_are_refused_naming_both(tmp_path):
    src = tmp_path / "src"
    (src / "chair").mkdir(parents=True)
    save_gaussians(random_cloud(100, seed=0), src / "chair" / "obj1.ply")
    captions = tmp_path / "c.csv"
    captions.write_text("id,caption\nchair/obj1,a wooden chair\nobj1,a seat\n")  # by id, and by stem
    with pytest.raises(DatasetError, match=rf"{captions}: line 2 \('chair/obj1'\) and line 3 \('obj1'\) both caption"):
        list_sources(str(src), PREPARE_SETTINGS, captions)


# ---------------------------------------------------------------------------- precomputed embeddings


def test_a_stem_shared_by_two_embedding_files_names_neither(tmp_path):
    from clip_gs.data.precomputed import attach_embeddings

    for folder in ("a", "b"):
        (tmp_path / "emb" / folder).mkdir(parents=True)
        (tmp_path / "emb" / folder / "uid1.safetensors").write_bytes(b"")
    items = [SourceItem("glbs/000-000/uid1", "x/uid1.ply")]
    with pytest.raises(DatasetError, match=r"no precomputed embeddings for 1 of 1 objects \(glbs/000-000/uid1\)"):
        attach_embeddings(items, tmp_path / "emb", lambda it: [it.id, "uid1"])


@pytest.mark.parametrize("extra", ["unknown-tensor", "integer-tensor"])
def test_precomputed_embeddings_with_other_tensors_are_refused(tmp_path, extra):
    import torch
    from safetensors.torch import save_file

    from clip_gs.data.precomputed import read_embeddings

    teacher = FakeTeacher()
    image = torch.ones(2, teacher.embed_dim)
    tensors = {"image_embeddings": image.long() if extra == "integer-tensor" else image}
    if extra == "unknown-tensor":
        tensors["extra"] = torch.zeros(3)
    path = tmp_path / "obj.safetensors"
    save_file(tensors, str(path), metadata={"teacher": teacher.identity, "cameras": "orbit"})
    with pytest.raises(DatasetError, match=rf"{path}: (unknown tensor\(s\) extra|tensors must be floating point)"):
        read_embeddings(str(path), teacher, ["a chair"])


# ---------------------------------------------------------------------------- fuzz: captions files

FUZZ_EXAMPLES = 300
FIELD_NAMES = ["id", "path", "uid", "caption", "captions", "label", "split", "colour", "ID "]
text = st.text(alphabet=st.sampled_from('ab |,"\n\r\t\\{}[]:é\x00'), max_size=12)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | text | st.sampled_from(SPLITS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=4),
    max_leaves=8,
)
jsonl_row = st.one_of(json_value, st.dictionaries(st.sampled_from(FIELD_NAMES), json_value, max_size=5))


@st.composite
def captions_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["jsonl", "csv", "bytes"]))
    if kind == "jsonl":
        rows = draw(st.lists(jsonl_row, max_size=5))
        data = "".join(json.dumps(row) + draw(st.sampled_from(["\n", "\n\n", "\r\n"])) for row in rows).encode()
    elif kind == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_NONE])),
                            escapechar="\\")  # fmt: skip
        if draw(st.booleans()):
            writer.writerow(draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=5)))
        for row in draw(st.lists(st.lists(text, max_size=4), max_size=5)):
            try:
                writer.writerow(row)
            except csv.Error:  # a row this dialect cannot write (a lone empty field unquoted)
                pass
        data = buffer.getvalue().encode()
    else:
        data = draw(st.binary(max_size=64))
    if draw(st.booleans()):  # a byte-level edit on top
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=0, max_size=4)) + data[at + draw(st.integers(0, 4)) :]
    return ("c.jsonl" if kind == "jsonl" else "c.csv"), data


def check_captions(path: Path) -> str:
    """Read ``path``: a well-formed table or a DatasetError, nothing else, within the memory bound."""

    def read():
        try:
            return read_captions(path)
        except DatasetError:
            return None

    table, peak = peak_bytes(read)
    assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
    if table is None:
        return "error"
    for key, entry in table.items():
        assert isinstance(key, str) and key == key.strip() and key
        assert set(entry) == {"captions", "label", "split"}
        assert entry["captions"] and all(isinstance(c, str) and c.strip() for c in entry["captions"])
        assert entry["label"] is None or isinstance(entry["label"], str)
        assert entry["split"] is None or entry["split"] in SPLITS
    return "table"


def test_fuzz_captions_files(tmp_path):
    outcomes = set()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=2000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(case=captions_file())
    def run(case):
        name, data = case
        path = tmp_path / name
        path.write_bytes(data)
        outcomes.add(check_captions(path))

    run()
    assert outcomes == {"table", "error"}  # the generator reaches both
