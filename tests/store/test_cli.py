"""`trajlib store info|validate|gc|compact` and `trajlib export tensorboard` exit codes."""

from __future__ import annotations

import json

from trajlib.cli import main


def test_store_commands_exit_codes(store, run_factory, capsys, tmp_path):
    for i in range(3):
        store.write_run(**run_factory(f"r{i}", n_steps=60, task="alpha"))
    d = str(store.path)
    assert main(["store", "info", d]) == 0
    assert "alpha" in capsys.readouterr().out
    assert main(["store", "info", d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 3
    assert main(["store", "validate", d]) == 0
    assert main(["store", "gc", d]) == 0
    assert main(["store", "compact", d]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    assert main(["store", "validate", d]) == 0

    # damage it: validate lists the problem and exits 1
    next(store.path.glob("steps/part-*.parquet")).unlink()
    capsys.readouterr()
    assert main(["store", "validate", d]) == 1
    assert "steps rows; expected 60" in capsys.readouterr().err


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["store", "info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert main(["export", "tensorboard", str(tmp_path / "nope"), str(tmp_path / "tb")]) == 2
