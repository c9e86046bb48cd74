"""The progress bar (tqdm): on stderr only, nothing at all with --quiet, fractions of an epoch."""
from __future__ import annotations

from pate.progress import Progress


def test_quiet_prints_nothing(capfd):
    bar = Progress(10, "vote", quiet=True, unit="queries")
    bar.update(4, status="answered 3")
    bar.update_to(10)
    bar.close()
    assert capfd.readouterr() == ("", "")
    assert bar.done == 10 and bar.status == "answered 3"


def test_the_bar_goes_to_stderr_with_its_label_count_and_status(capfd):
    bar = Progress(3, "train-teachers", unit="epochs")
    bar.update_to(4 / 3, status="loss 0.500")
    bar.update_to(3, status="loss 0.250")  # full: finished on its own line
    bar.close()
    out, err = capfd.readouterr()
    assert out == ""
    assert "train-teachers" in err and "3/3" in err and "epochs" in err and "loss 0.250" in err
    assert err.endswith("\n")
    assert bar.done == 3


def test_a_resumed_bar_counts_from_where_it_stopped(capfd):
    bar = Progress(100, "aggregate", start=40)
    bar.update(30)
    assert bar.done == 70
    bar.close()
    assert "70/100" in capfd.readouterr().err
    done = Progress(5, "aggregate", start=5)  # nothing left: no bar
    done.close()
    assert capfd.readouterr() == ("", "")
