"""`filterd learn`: message files, directories, mbox files and Maildirs, sa-learn output."""

from __future__ import annotations

import io
from pathlib import Path

from filterd.config import Config
from filterd.cli import main
from filterd.content.bayes.learn import iter_messages, learn_command, split_mbox
from filterd.content.bayes.model import BayesModel
from tests.unit.bayes_corpus import make_message


def config(tmp_path: Path) -> Config:
    return Config.from_text(f"data_directory = {tmp_path / 'data'}\nbayes_min_spam_num = 1\nbayes_min_ham_num = 1\n")


def run(cfg: Config, spam: list[str], ham: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = learn_command(cfg, spam, ham, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def write_dir(base: Path, spam: bool, n: int) -> Path:
    base.mkdir(parents=True)
    for i in range(n):
        (base / f"{i:05d}.eml").write_bytes(make_message(spam, i))
    (base / "cmds").write_text("mv 00001.eml elsewhere\n")  # SpamAssassin corpus index file
    (base / ".hidden").write_bytes(b"Subject: not mail\n\n")
    return base


def mbox(messages: list[bytes]) -> bytes:
    out = b""
    for m in messages:
        body = b"\n".join(b">" + line if line.startswith(b"From ") else line for line in m.split(b"\n"))
        out += b"From sender@example.com Mon Oct  7 10:00:00 2002\n" + body + b"\n"
    return out


def test_directories_recursively_skipping_cmds(tmp_path: Path) -> None:
    spam = write_dir(tmp_path / "corpus" / "spam", True, 4)
    ham = write_dir(tmp_path / "corpus" / "ham" / "nested", False, 3)
    cfg = config(tmp_path)
    rc, out, err = run(cfg, [str(spam)], [str(tmp_path / "corpus" / "ham")])
    assert rc == 0, err
    assert out.splitlines()[0] == "Learned tokens from 7 message(s) (7 message(s) examined)"
    assert "4 spam, 3 ham learned" in out
    model = BayesModel.load(str(tmp_path / "data" / "bayes" / "model.npz"))
    assert (model.nspam, model.nham) == (4, 3)
    assert ham.exists()


def test_relearning_the_same_corpus_learns_nothing(tmp_path: Path) -> None:
    spam = write_dir(tmp_path / "spam", True, 3)
    cfg = config(tmp_path)
    assert run(cfg, [str(spam)], [])[0] == 0
    rc, out, _ = run(cfg, [str(spam)], [])
    assert rc == 0 and out.startswith("Learned tokens from 0 message(s) (3 message(s) examined)")
    rc, out, _ = run(cfg, [], [str(spam)])  # now said to be ham: moved, as sa-learn does
    assert out.startswith("Learned tokens from 3 message(s)")
    model = BayesModel.load(str(tmp_path / "data" / "bayes" / "model.npz"))
    assert (model.nspam, model.nham) == (0, 3)


def test_mbox_file(tmp_path: Path) -> None:
    body_with_from = b"Subject: quoting\n\nFrom here on\nthe line above starts with From\n"
    path = tmp_path / "spam.mbox"
    path.write_bytes(mbox([make_message(True, 1), make_message(True, 2), body_with_from]))
    messages = list(iter_messages(str(path)))
    assert len(messages) == 3
    assert messages[0] == make_message(True, 1)
    assert messages[2] == body_with_from  # >From unquoted, separator blank line removed
    rc, out, _ = run(config(tmp_path), [str(path)], [])
    assert rc == 0 and out.startswith("Learned tokens from 3 message(s) (3 message(s) examined)")


def test_split_mbox_edge_cases() -> None:
    assert list(split_mbox([])) == []
    lines = [b"From a@b Mon\n", b"Subject: x\n", b"\n", b"text\n", b"From inside body, no blank before\n",
             b"\r\n", b"From c@d Tue\r\n", b"Subject: y\r\n", b"\r\n", b"body\r\n", b"\r\n"]
    messages = list(split_mbox(lines))
    assert [m.split(b"\n")[0] for m in messages] == [b"Subject: x", b"Subject: y\r"]
    assert b"From inside body" in messages[0]
    assert list(split_mbox(lines))[1].endswith(b"body\r\n")


def test_maildir_reads_cur_and_new_only(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1.host:2,S").write_bytes(make_message(False, 1))
    (maildir / "new" / "2.host").write_bytes(make_message(False, 2))
    (maildir / "tmp" / "3.host").write_bytes(make_message(False, 3))  # delivery in progress
    assert sorted(iter_messages(str(maildir))) == sorted([make_message(False, 1), make_message(False, 2)])
    rc, out, _ = run(config(tmp_path), [], [str(maildir)])
    assert rc == 0 and out.startswith("Learned tokens from 2 message(s) (2 message(s) examined)")


def test_single_message_file(tmp_path: Path) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(make_message(True, 5))
    assert list(iter_messages(str(path))) == [make_message(True, 5)]


def test_missing_path_and_nothing_to_learn(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    rc, _, err = run(cfg, [str(tmp_path / "absent")], [])
    assert rc == 2 and "absent: no such file or directory" in err
    rc, _, err = run(cfg, [], [])
    assert rc == 2 and "nothing to learn" in err
    assert not (tmp_path / "data" / "bayes" / "model.npz").exists()


def test_broken_model_file_is_reported(tmp_path: Path) -> None:
    spam = write_dir(tmp_path / "spam", True, 2)
    bad = tmp_path / "data" / "bayes" / "model.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"junk")
    rc, _, err = run(config(tmp_path), [str(spam)], [])
    assert rc == 1 and "not a filterd Bayes model" in err
    assert bad.read_bytes() == b"junk"


def test_filterd_learn_command(tmp_path: Path, capsys) -> None:
    spam = write_dir(tmp_path / "spam", True, 2)
    rc = main(["learn", "-o", f"data_directory={tmp_path / 'data'}", "--spam", str(spam)])
    assert rc == 0
    assert "Learned tokens from 2 message(s)" in capsys.readouterr().out
