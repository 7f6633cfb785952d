"""A team's purchase log with text ids, through `recs run` end to end: the lists, the titles, the rules, `recs
recommend` and `recommendations_for` speak the shop's own ids; a warehouse that held MovieLens's whole-number ids
takes them; a bad export fails with one line and leaves the published lists as they were."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from flows.cli import main

pytestmark = pytest.mark.slow


def _purchases(path, n_users: int = 300, n_items: int = 60) -> None:
    users = [f"C{u:04d}" for u in range(n_users) for _ in range(8)]
    items = [f"SKU-{(u * 7 + k * k + k) % n_items:03d}" for u in range(n_users) for k in range(8)]
    quantity = [1 + (u + k) % 3 for u in range(n_users) for k in range(8)]
    pl.DataFrame({"customer_id": users, "sku": items, "quantity": quantity}).write_csv(path)


def test_a_purchase_log_with_text_ids_runs_end_to_end(ml100k_zip, tmp_path, capsys, prefect_harness):
    log, products = tmp_path / "purchases.csv", tmp_path / "products.csv"
    _purchases(log)
    pl.DataFrame({"sku": [f"SKU-{i:03d}" for i in range(60)], "name": [f"Product {i}" for i in range(60)]}).write_csv(
        products
    )
    warehouse = tmp_path / "W.duckdb"
    where = ["--warehouse", str(warehouse), "--data-dir", str(tmp_path / "D"), "--top-n", "5"]
    # the warehouse held MovieLens's whole-number ids first: its id columns become text in the first text-id write
    assert main(["run", "--source", str(ml100k_zip), *where, "--model", "popularity", "--no-refit-on-all"]) == 0
    shop = ["--source", str(log), "--items", str(products), "--exclude-items", "SKU-000,SKU-001"]
    shop += ["--min-list-share", "0"]  # 300 shoppers after 943 MovieLens users is a new catalogue, not a collapse
    assert main(["run", *shop, *where]) == 0
    out = capsys.readouterr().out
    assert "succeeded: 1500 recommendations published" in out and "rmse" not in out  # implicit: no rating model
    with duckdb.connect(str(warehouse), read_only=True) as con:
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'recommendations'"
            ).fetchall()
        )
        assert types["user_id"] == types["item_id"] == "VARCHAR"
        listed = con.execute("SELECT DISTINCT item_id FROM recommendations").fetchall()
        assert {item for (item,) in listed} <= {f"SKU-{i:03d}" for i in range(2, 60)}  # the rule held
        row = con.execute(
            "SELECT title, predicted_rating FROM recommendations_with_titles WHERE user_id = 'C0007' AND rank = 1"
        ).fetchone()
        assert row is not None and row[0].startswith("Product ") and row[1] is None
        served = con.execute("SELECT count(*), min(source) FROM recommendations_for('someone-new')").fetchone()
        assert served == (5, "fallback")
    assert main(["recommend", "C0007", "--warehouse", str(warehouse)]) == 0
    assert "recommendations for user C0007:" in capsys.readouterr().out

    # a bad export: one line, the run recorded as failed, the lists untouched
    before = warehouse.read_bytes()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        lists = con.execute("SELECT * FROM recommendations ORDER BY user_id, rank").fetchall()
    log.write_text("customer_id,sku,quantity\nC0001,SKU-001,2\nC0002,SKU-002,-3\n")
    assert main(["run", *shop, *where]) == 1
    err = capsys.readouterr().err
    assert "purchases.csv line 3: field 'quantity' is '-3.0', expected a finite number, 0 or more" in err
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT * FROM recommendations ORDER BY user_id, rank").fetchall() == lists
        status, error = con.execute("SELECT status, error FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert status == "failed" and "expected a finite number" in error
    assert before != warehouse.read_bytes()  # the failure itself is recorded
