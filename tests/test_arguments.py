"""The argument grammars the ``kerasarch`` and ``finetune`` commands share: a data source (``--data``, the
``finetune`` DATA argument) and an input shape (``--input-shape``)."""

import pytest

from finetune.backbone import parse_shape
from finetune.errors import FinetuneError
from finetune.sources import open_source
from kerasarch.cli import main
from kerasarch.commands import parse_input_shape
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
    with pytest.raises(
        KerasarchError,
        match=r"image folder.*mnist5k, digits or tfds:NAME\. Received: '.*f\.txt' "
        r"\(a file, not a folder\)",
    ):
        parse_data_source(tmp_path / "f.txt")
    with pytest.raises(FinetuneError, match=r"Received: '.*nope' \(no such folder\)"):
        open_source(tmp_path / "nope")


def test_kerasarch_train_refuses_a_bad_source_before_any_work(tmp_path, capsys):
    assert main(["train", "lenet5", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "(no such folder)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["32,32,3", "32x32x3", "32×32×3", (32, 32, 3), [32, 32, 3]])
def test_input_shape_forms(text):
    assert parse_input_shape(text) == (32, 32, 3)
    assert parse_shape(text) == (32, 32, 3)


@pytest.mark.parametrize("text", ["32,a,1", "32,32", "32,32,3,1", "0,32,3", "", (32, 32)])
def test_a_bad_input_shape_names_the_flag_and_what_was_received(text):
    with pytest.raises(KerasarchError, match=r"--shape must look like 224,224,3 .*Received: --shape "):
        parse_input_shape(text, flag="--shape")
    with pytest.raises(FinetuneError, match="--input-shape must look like"):
        parse_shape(text)
    assert parse_input_shape(None) is None
