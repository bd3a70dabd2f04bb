"""The one grammar of a data-source argument (``kerasarch train --data``, the ``finetune`` commands)."""

import pytest

from finetune.errors import FinetuneError
from finetune.sources import open_source
from kerasarch.cli import main
from kerasarch.data.sources import DataSource, parse_data_source
from kerasarch.errors import KerasarchError


def test_each_form_of_a_source(tmp_path):
    assert parse_data_source("mnist5k") == DataSource("builtin", "mnist5k")
    assert parse_data_source("digits") == DataSource("builtin", "digits")
    assert parse_data_source("tfds:cifar10") == DataSource("tfds", "cifar10")
    assert parse_data_source(tmp_path) == DataSource("folder", str(tmp_path))


def test_a_bad_source_says_what_was_received_and_what_is_allowed(tmp_path):
    with pytest.raises(KerasarchError, match=r"tfds:NAME.*Received: 'tfds:'"):
        parse_data_source("tfds:")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(KerasarchError, match=r"image folder.*mnist5k, digits or tfds:NAME\. Received: '.*f\.txt' "
                                             r"\(a file, not a folder\)"):
        parse_data_source(tmp_path / "f.txt")
    with pytest.raises(FinetuneError, match=r"Received: '.*nope' \(no such folder\)"):
        open_source(tmp_path / "nope")


def test_kerasarch_train_refuses_a_bad_source_before_any_work(tmp_path, capsys):
    assert main(["train", "lenet5", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "(no such folder)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
