"""Atomic writes: whole files with ordinary permissions, nothing left over."""

import contextlib
import json
import os
import stat
import subprocess
import sys

import pytest

from l2l_tf import atomic, networks, saved_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_get_the_umask_permissions_not_tempfiles_0600(tmp_path,
                                                            umask_022):
    path = tmp_path / "sub" / "evaluation.json"
    atomic.write_json({"a": 1}, str(path))
    assert json.loads(path.read_text()) == {"a": 1}
    assert _mode(path) == 0o644
    atomic.write_bytes(str(tmp_path / "x.png"), b"\x89PNG")
    assert _mode(tmp_path / "x.png") == 0o644
    assert sorted(os.listdir(tmp_path)) == ["sub", "x.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "study.json"
    atomic.write_json({"old": True}, str(path))
    with pytest.raises(TypeError):
        atomic.write_json({"new": object()}, str(path))  # Not serializable.
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["study.json"]


def test_exported_folders_are_readable_like_any_folder(tmp_path, umask_022):
    rule = networks.CoordinatewiseLSTM()
    path = saved_model.export(str(tmp_path / "export"), rule,
                              rule.init_phi(0))
    assert _mode(path) == 0o755
    assert os.listdir(tmp_path) == ["export"]


def test_check_folder_refuses_a_file_and_names_the_argument(tmp_path):
    atomic.check_folder(str(tmp_path))  # A folder,
    atomic.check_folder(str(tmp_path / "new"))  # or one to be made.
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(ValueError, match=r"`workdir` must be a folder.*"
                       r"Received: workdir='.*a_file'"):
        atomic.check_folder(str(tmp_path / "a_file"))
    with pytest.raises(ValueError, match=r"'.*a_file' is a file\. Received: "
                       r"workdir='.*a_file/sub/run'"):
        atomic.check_folder(str(tmp_path / "a_file" / "sub" / "run"))
    with pytest.raises(ValueError, match=r"must name a folder.*Received: "
                       r"workdir=''"):
        atomic.check_folder("")  # Not the current folder.
    assert (tmp_path / "a_file").read_text() == "mine"


@contextlib.contextmanager
def held_by_another_process(folder):
    """Yields the pid of a process that holds `folder` (atomic.exclusive)
    until the block ends, when it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from l2l_tf import atomic\n"
         f"with atomic.exclusive({str(folder)!r}):\n"
         "    print('held', flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_exclusive_refuses_a_second_holder_and_names_the_first(tmp_path):
    """Another process holding the folder: InUse at once, naming its pid;
    the lock goes when the holder exits, even by SIGKILL."""
    folder = tmp_path / "run"
    with held_by_another_process(folder) as pid:
        with pytest.raises(atomic.InUse, match=rf"`workdir` '{folder}' is in "
                           rf"use by another run \(process {pid},"):
            with atomic.exclusive(str(folder)):
                pass
    with atomic.exclusive(str(folder)):
        with open(folder / ".lock") as f:
            assert f.read() == str(os.getpid())
