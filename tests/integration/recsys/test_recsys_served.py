"""A log of a different shape end to end: train → gate → MLflow → real API on 127.0.0.1 → its own ids back.

The synthetic log has sparse string ids, no user features and a ten-year span; nothing MovieLens-shaped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from systems.common.http import ServerProcess
from tests.integration.recsys.conftest import Shop, api_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(shop: Shop) -> Iterator[str]:
    s = shop.settings
    with ServerProcess("systems.recsys.serve:create_app", env=api_env(s), log_path=s.recsys_dir / "api.log") as server:
        yield server.url


def test_synthetic_log_train_serve_recommend_returns_its_ids(api: str, shop: Shop) -> None:
    from systems.common.registry import CHAMPION, configure, get_alias_version

    s, log, version = shop.settings, shop.log, shop.version
    user = log.users.ids[5]
    body = httpx.get(api + "/recommend", params={"user_id": user, "k": 10}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids) <= set(log.items.ids) and all(isinstance(i, str) and i.startswith("sku-") for i in ids)
    seen = {log.items.ids[i] for i in log.interactions.query("user_idx == 5")["item_idx"]}
    assert not set(ids) & seen  # nothing the user already has
    assert body["user_id"] == user and body["cold_start"] is False and body["warnings"] == []
    # the answer names the registered version the champion alias points at, not a content hash
    configure(s)
    assert body["model_version"] == version == get_alias_version(s.model_name, CHAMPION)
    post = httpx.post(api + "/recommend", json={"user_id": user, "k": 3}).json()
    assert [i["item_id"] for i in post["items"]] == ids[:3]


def test_session_items_change_anonymous_recommendations(api: str, shop: Shop) -> None:
    log = shop.log
    cats = [c[0] for c in log.item_categories or []]
    by_cat = {c: [log.items.ids[i] for i in range(log.n_items) if cats[i] == c] for c in ("cat-1", "cat-6")}

    def rec(session: list[str]) -> list[str]:
        body = httpx.post(api + "/recommend", json={"k": 10, "session_items": session}).json()
        assert body["user_id"] is None and body["warnings"] == []
        return [i["item_id"] for i in body["items"]]

    anonymous = rec([])
    a, b = rec(by_cat["cat-1"][:3]), rec(by_cat["cat-6"][:3])
    assert a != anonymous and b != anonymous and set(a) != set(b)
    cat_of = dict(zip(log.items.ids, cats, strict=True))
    # browsing one category brings that category forward (chains live inside a category in this shop)
    assert np.mean([cat_of[i] == "cat-1" for i in a]) > np.mean([cat_of[i] == "cat-1" for i in anonymous]) + 0.3
    assert np.mean([cat_of[i] == "cat-6" for i in b]) > np.mean([cat_of[i] == "cat-6" for i in anonymous]) + 0.3
    # the same via GET (a comma-separated list) and for an unknown user id: the session still steers
    got = httpx.get(
        api + "/recommend", params={"user_id": "never-seen", "session_items": ",".join(by_cat["cat-1"][:3])}
    )
    assert [i["item_id"] for i in got.json()["items"]] == a
    assert "unknown user id" in " ".join(got.json()["warnings"])


def test_bad_ids_are_422_and_unknown_items_are_warnings(api: str) -> None:
    # ids are opaque printable text up to 128 characters, or integers in the signed 64-bit range
    for params in (
        {"user_id": "x" * 129},
        {"user_id": "a\x01b"},
        {"user_id": str(2**63)},
        {"session_items": "sku-1,,sku-2"},
        {"k": 0},
    ):
        assert httpx.get(api + "/recommend", params=params).status_code == 422, params
    for body in ({"user_id": 2**63}, {"session_items": ["ok", "not\nok"]}, {"user_id": -1}, {"colour": "red"}):
        r = httpx.post(api + "/recommend", json=body)
        assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error", body
    ok = httpx.post(api + "/recommend", json={"session_items": ["sku-nope"], "k": 4}).json()
    assert len(ok["items"]) == 4 and "sku-nope" in ok["warnings"][0] and ok["cold_start"] is True
    # a title with spaces and a comma is an id like any other (MovieLens-1M's ids are titles): POST carries it
    odd = httpx.post(api + "/recommend", json={"user_id": "Wonderful, Horrible Life (1993)", "k": 2})
    assert odd.status_code == 200 and "unknown user id" in odd.json()["warnings"][0]


def test_served_model_is_registered_with_its_data_version(shop: Shop) -> None:
    from mlflow import MlflowClient

    from systems.common.registry import configure
    from systems.recsys.served import data_version

    s, log, version = shop.settings, shop.log, shop.version
    configure(s)
    mv = MlflowClient().get_model_version(s.model_name, version)
    assert mv.tags["data_version"] == data_version(log) and mv.tags["dataset"] == "synthetic"
    run = MlflowClient().get_run(mv.run_id)
    assert run.data.params["kind"] == mv.tags["kind"] and "test_ndcg_at_10" in run.data.metrics
    assert Path(s.served_dir / "served.pkl").exists()
