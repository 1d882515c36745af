"""The command line end to end with the fused kernels (Triton's interpreter on CPU): `eval
--compare-reference` runs the fast model and the reference on an odd-sized image and reports how
far apart they are. (The other command-line tests run the fast model's PyTorch path.)"""

import json

import pytest
from imaging import random_image, tiny_checkpoint

from drsformer_fast import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_compare_reference_with_kernels(tmp_path, capsys):
    rainy, clean = tmp_path / "rainy", tmp_path / "clean"
    rainy.mkdir()
    clean.mkdir()
    random_image(rainy / "a.png", 21, 27, seed=1)
    random_image(clean / "a.png", 21, 27, seed=2)
    ckpt = tiny_checkpoint(tmp_path / "net.pth", seed=3)
    code = cli.main(["eval", "--weights", str(ckpt), "--input", str(rainy), "--target", str(clean),
                     "--compare-reference", "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    # outputs in [0, 1]; fp32 kernels vs the fp32 original: differences of a few roundings
    assert 0 < report["parity"]["max_abs_diff"] < 1e-4, report["parity"]
