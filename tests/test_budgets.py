"""Per-record budgets follow the record, never its position; the published levels are the file's."""
import numpy as np
import pytest

from pate.aggregation import budgets


def write(tmp_path, rows):
    path = tmp_path / "budgets.csv"
    path.write_text("record,epsilon\n" + "".join(f"{r},{e}\n" for r, e in rows))
    return str(path)


def test_a_removed_record_moves_no_other_records_budget(tmp_path):
    ids = [f"r{i}" for i in range(200)]
    path = write(tmp_path, [("r152", 0.05)])
    full = budgets.resolve(path, 1.0, 200, ids)
    assert full[152] == 0.05 and (np.delete(full, 152) == 1.0).all()
    less_ids = ids[:40] + ids[41:]  # record 40 removed: r152 is now at position 151
    less = budgets.resolve(path, 1.0, 199, less_ids)
    assert less[151] == 0.05 and less[152] == 1.0 and (np.delete(less, 151) == 1.0).all()


def test_positions_are_refused_where_records_can_move(tmp_path):
    path = write(tmp_path, [(152, 0.05)])
    with pytest.raises(budgets.BudgetError, match="stable id"):
        budgets.resolve(path, 1.0, 200)  # arrays without ids
    assert budgets.resolve(path, 1.0, 200, by_index=True)[152] == 0.05  # a built-in dataset's fixed indices
    assert (budgets.resolve(path, 1.0, 200, [f"r{i}" for i in range(200)]) == 1.0).all()  # an index is no id


def test_levels_are_the_files_not_those_of_the_records_drawn(tmp_path):
    path = write(tmp_path, [("a", 2), ("b", 5), ("c", 5)])
    assert budgets.levels(path, 3.0) == [2.0, 3.0, 5.0]
    drawn = budgets.resolve(path, 3.0, 2, ["c", "z"])  # "a" (level 2) is not among the records drawn
    assert sorted(set(drawn.tolist())) == [3.0, 5.0]
    assert budgets.levels(path, 3.0) == [2.0, 3.0, 5.0]  # and the statement still lists level 2
