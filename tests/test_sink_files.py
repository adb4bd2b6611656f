"""Where the file sink may write (sink_files.FileConfinement), on a real filesystem: only in the
listed directories, never in the state directory, never through a symlink at the end, a
directory swapped for a link, a hard link, a FIFO or anything but a regular file."""

from __future__ import annotations

import os
import stat

import pytest

from j1mskyd.sink_files import FileConfinement


@pytest.fixture
def place(tmp_path):
    """logs/ (listed), state/ (forbidden, inside it), elsewhere/ (not listed)."""
    for d in ("logs", "logs/state", "elsewhere"):
        (tmp_path / d).mkdir()
    (tmp_path / "logs" / "state" / "data.key").write_bytes(b"key")
    return tmp_path, FileConfinement([str(tmp_path / "logs")], forbidden=[str(tmp_path / "logs" / "state")])


def append(files: FileConfinement, path, data: bytes = b"x\n") -> None:
    fd = files.open_append(str(path))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_a_file_in_a_listed_directory_is_made_private_and_appended_to(place):
    tmp, files = place
    out = tmp / "logs" / "sub"
    out.mkdir()
    assert files.refusal(str(out / "e.jsonl")) is None
    append(files, out / "e.jsonl", b"a\n")
    append(files, out / "e.jsonl", b"b\n")
    assert (out / "e.jsonl").read_bytes() == b"a\nb\n"
    assert stat.S_IMODE((out / "e.jsonl").stat().st_mode) == 0o600


@pytest.mark.parametrize("where, reason", [
    ("elsewhere/e.jsonl", "file_sink_dirs"),
    ("logs/../elsewhere/e.jsonl", "file_sink_dirs"),
    ("logs/state/data.key", "state directory"),
    ("logs/state", "state directory"),
    ("logs/state/new.jsonl", "state directory"),
    ("logs/", "file name"),
    ("logs/..", "file name"),
    ("logs/a\0b", "NUL"),
])
def test_a_name_outside_or_in_the_state_dir_is_refused(place, where, reason):
    tmp, files = place
    refused = files.refusal(f"{tmp}/{where}")
    assert refused is not None and reason in refused
    with pytest.raises(PermissionError, match=reason):
        files.open_append(f"{tmp}/{where}")


def test_no_listed_directory_means_no_file_at_all(tmp_path):
    files = FileConfinement([])
    assert "file_sink_dirs is empty" in files.refusal(str(tmp_path / "e.jsonl"))
    with pytest.raises(PermissionError):
        files.open_append(str(tmp_path / "e.jsonl"))
    assert not (tmp_path / "e.jsonl").exists()


def test_a_symlink_at_the_end_is_not_followed(place):
    tmp, files = place
    (tmp / "logs" / "e.jsonl").symlink_to(tmp / "elsewhere" / "victim")
    (tmp / "logs" / "k.jsonl").symlink_to(tmp / "logs" / "state" / "data.key")
    for name in ("e.jsonl", "k.jsonl"):
        with pytest.raises(PermissionError):
            append(files, tmp / "logs" / name)
    assert not (tmp / "elsewhere" / "victim").exists()
    assert (tmp / "logs" / "state" / "data.key").read_bytes() == b"key"


def test_a_directory_swapped_for_a_link_after_its_name_was_judged_is_seen_at_the_open(place, monkeypatch):
    # The race a name check alone leaves: the directory is judged, then replaced by a symlink
    # to a place outside before the open.  The open is judged by where it landed.
    tmp, files = place
    d = tmp / "logs" / "d"
    d.mkdir()
    judged = files.refusal

    def judge_then_swap(path: str):
        verdict = judged(path)
        d.rmdir()
        d.symlink_to(tmp / "elsewhere")
        return verdict

    monkeypatch.setattr(files, "refusal", judge_then_swap)
    with pytest.raises(PermissionError, match="file_sink_dirs"):
        append(files, d / "e.jsonl")
    assert list((tmp / "elsewhere").iterdir()) == []


def test_a_hard_link_is_refused_whatever_it_names(place):
    # A second name of the state dir's data key, made in a listed directory: its name is
    # harmless, its file is not.
    tmp, files = place
    os.link(tmp / "logs" / "state" / "data.key", tmp / "logs" / "innocent.jsonl")
    with pytest.raises(PermissionError, match="hard link"):
        append(files, tmp / "logs" / "innocent.jsonl")
    assert (tmp / "logs" / "state" / "data.key").read_bytes() == b"key"


def test_a_fifo_is_refused_at_once_not_waited_on(place):
    tmp, files = place
    os.mkfifo(tmp / "logs" / "pipe")
    with pytest.raises(OSError):  # no reader: ENXIO at the open (O_NONBLOCK), not a hang
        files.open_append(str(tmp / "logs" / "pipe"))
    reader = os.open(tmp / "logs" / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(PermissionError, match="regular file"):  # a reader: opened, then refused
            files.open_append(str(tmp / "logs" / "pipe"))
    finally:
        os.close(reader)


def test_a_listed_directory_reached_through_a_link_is_the_same_directory(tmp_path):
    # /var/log -> /data/log on some Pis: the listed name and the real place both count.
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    files = FileConfinement([str(tmp_path / "alias")])
    append(files, tmp_path / "real" / "e.jsonl")
    append(files, tmp_path / "alias" / "e.jsonl")
    assert (tmp_path / "real" / "e.jsonl").read_bytes() == b"x\nx\n"
