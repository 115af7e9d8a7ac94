"""Poster QR codes and the resident's daily sorting check-in (POST /scans)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from io import BytesIO
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import zxingcpp
from PIL import Image

from app import clock as app_clock
from app import qr
from app.clock import local_day
from app.db import db
from app.ledger.models import DailyEarning, LedgerEntry
from app.ledger.verify import verify_ledger
from app.sorting.models import Checkin
from tests.conftest import (
    SHANGHAI,
    Ticking,
    assert_error,
    community_id,
    count,
    during_an_uncommitted_freeze,
    make_point,
    pg_concurrency,
    race,
)


def poster(api, caller, point_id: int) -> dict:
    response = api.get(f"/collection-points/{point_id}/qr", as_=caller)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def decode_png(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(BytesIO(png)))
    assert len(found) == 1
    return found[0].text


def balance(api, resident) -> int:
    response = api.get("/me", as_=resident)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["balance"]


def scan(api, resident, token: str, **extra):
    return api.post("/scans", as_=resident, json={"token": token, **extra})


def scan_ok(api, resident, token: str, **extra) -> dict:
    response = scan(api, resident, token, **extra)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def world(api):
    admin = api.staff("admin")
    a = make_point(api, admin, "恒康甲站")
    b = make_point(api, admin, "恒康乙站")
    c = make_point(api, admin, "恒康丙站")
    x = make_point(api, admin, "鑫海湾站", "xinhaiwan")
    return {
        "admin": admin,
        "worker": api.staff("worker", community_id=community_id("hengkang")),
        "a": a,
        "b": b,
        "c": c,
        "x": x,
        "tokens": {name: poster(api, admin, pid)["token"] for name, pid in (("a", a), ("b", b), ("c", c), ("x", x))},
    }


# --- poster QR -----------------------------------------------------------------------------------------------


def test_poster_is_visible_to_staff_in_scope_only(api, app, world):
    a = world["a"]
    collector = api.staff("collector", collection_point_ids=[a])
    expected = poster(api, world["admin"], a)
    assert expected["url"] == f"{app.config['PUBLIC_BASE_URL']}/q/{expected['token']}"
    assert poster(api, world["worker"], a) == expected
    assert poster(api, collector, a) == expected

    other_collector = api.staff("collector", collection_point_ids=[world["b"]])
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    for caller in (other_collector, outsider, api.resident()):
        assert_error(api.get(f"/collection-points/{a}/qr", as_=caller), 403, "forbidden")
        assert_error(api.get(f"/collection-points/{a}/qr.png", as_=caller), 403, "forbidden")
        assert_error(api.get(f"/collection-points/{a}/qr.svg", as_=caller), 403, "forbidden")
    assert_error(api.get(f"/collection-points/{a}/qr"), 401, "unauthorized")
    assert_error(api.get("/collection-points/999999/qr", as_=world["admin"]), 404, "not_found")


def test_poster_png_decodes_to_the_url_and_the_url_checks_in(api, world):
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    expected = poster(api, collector, world["a"])
    response = api.get(f"/collection-points/{world['a']}/qr.png", as_=collector)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    url = decode_png(response.get_data())
    assert url == expected["url"]

    resident = api.resident()
    body = scan_ok(api, resident, url)
    assert body["kind"] == "checkin"
    assert body["points"] == 5
    assert body["co2e_g"] == 0
    assert body["balance"] == 5
    assert body["collection_point_id"] == world["a"]
    assert body["collection_point_name"] == "恒康甲站"  # 已在「恒康甲站」打卡
    assert body["day"] == "2026-06-15"
    assert balance(api, resident) == 5
    entry = api.get("/me/ledger", as_=resident).get_json()["items"][0]
    assert entry["id"] == body["entry_id"]
    assert (entry["delta"], entry["kind"], entry["source"], entry["ref_type"]) == (5, "earn", "checkin", "checkin")
    # opened from WeChat's scanner, the mini-program gets the URL percent-encoded (options.q), and may pass it on so
    assert scan_ok(api, api.resident(), quote(url, safe=""))["points"] == 5


def test_poster_svg_is_svg(api, world):
    response = api.get(f"/collection-points/{world['a']}/qr.svg", as_=world["worker"])
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    text = response.get_data(as_text=True)
    assert "<svg" in text
    assert text.rstrip().endswith("</svg>")


def test_rotating_revokes_old_posters(api, world):
    old = world["tokens"]["a"]
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    assert_error(api.post(f"/collection-points/{world['a']}/qr/rotate", as_=collector), 403, "forbidden")
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    assert_error(api.post(f"/collection-points/{world['a']}/qr/rotate", as_=outsider), 403, "forbidden")
    assert poster(api, world["admin"], world["a"])["token"] == old
    scan_ok(api, api.resident(), old)  # this worker now holds the point's row

    response = api.post(f"/collection-points/{world['a']}/qr/rotate", as_=world["worker"])
    assert response.status_code == 200, response.get_json()
    new = response.get_json()["token"]
    assert new != old
    assert poster(api, collector, world["a"])["token"] == new

    resident = api.resident()
    error = assert_error(scan(api, resident, old), 422, "invalid_qr")
    assert error["message"] == "二维码已失效，海报可能已更换：请扫描回收点现场张贴的最新海报"  # what to do
    assert error["details"] == {"reason": "poster_replaced"}
    assert scan_ok(api, resident, new)["balance"] == 5
    # other points' posters are untouched
    assert scan_ok(api, resident, world["tokens"]["b"])["balance"] == 10


def test_a_rotation_retried_with_its_idempotency_key_answers_the_same_poster(api, world):
    """Each call rotates again, so a client that lost the answer and simply retried would hold a dead poster; with
    the first try's key it gets that poster back, and the secret turns once."""
    path, headers = f"/collection-points/{world['a']}/qr/rotate", {"Idempotency-Key": "reprint-2026-12"}
    first = api.post(path, as_=world["worker"], headers=headers)
    again = api.post(path, as_=world["worker"], headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert poster(api, world["admin"], world["a"])["token"] == first.get_json()["token"]
    assert scan_ok(api, api.resident(), first.get_json()["token"])["points"] == 5


def test_a_point_retired_by_another_worker_refuses_scans_at_once(api, world):
    """Each worker keeps a copy of the points; the claim itself checks the point is still active, so this worker's
    copy (still active here) does not let a retired point pay."""
    from app.sorting.models import CollectionPoint

    scan_ok(api, api.resident(), world["tokens"]["a"])  # this worker now holds the point's row
    db.session.execute(sa.update(CollectionPoint).where(CollectionPoint.id == world["a"]).values(active=False))
    db.session.commit()
    late = api.resident()
    error = assert_error(scan(api, late, world["tokens"]["a"]), 422, "invalid_qr")
    assert error["message"] == "该回收点已停用，请到附近其他回收点打卡"
    assert error["details"] == {"reason": "point_retired"}  # the app can open the nearby list
    assert api.get("/me", as_=late).get_json()["balance"] == 0
    assert count(Checkin) == 1


def test_an_old_poster_stops_at_once_when_another_worker_rotates_it(api, world):
    """The poster page promises 旧海报将立即失效: this worker's copy still has the old secret, and the old token
    verifies against it, but the claim checks the secret in the database."""
    from app.sorting.models import CollectionPoint, new_secret

    old = world["tokens"]["a"]
    scan_ok(api, api.resident(), old)
    rotate = sa.update(CollectionPoint).where(CollectionPoint.id == world["a"]).values(qr_secret=new_secret())
    db.session.execute(rotate)
    db.session.commit()
    late = api.resident()
    error = assert_error(scan(api, late, old), 422, "invalid_qr")
    assert error["message"] == "二维码已失效，海报可能已更换：请扫描回收点现场张贴的最新海报"
    assert error["details"] == {"reason": "poster_replaced"}  # found by the claim, as by the worker's copy
    assert api.get("/me", as_=late).get_json()["balance"] == 0
    assert count(Checkin) == 1
    # the refusal dropped the stale copy: the new poster pays, and the old one stays refused
    assert scan_ok(api, late, poster(api, world["admin"], world["a"])["token"])["points"] == 5
    assert_error(scan(api, api.resident(), old), 422, "invalid_qr")


def test_a_poster_rotated_by_another_worker_works_at_once(api, world):
    """This worker's copy of the point still has the old secret; a refusal is checked against the database."""
    from app.sorting.models import CollectionPoint, new_secret

    scan_ok(api, api.resident(), world["tokens"]["a"])  # this worker now holds the point's row
    rotate = sa.update(CollectionPoint).where(CollectionPoint.id == world["a"]).values(qr_secret=new_secret())
    db.session.execute(rotate)
    db.session.commit()
    fresh = poster(api, world["admin"], world["a"])["token"]
    assert fresh != world["tokens"]["a"]
    assert scan_ok(api, api.resident(), fresh)["points"] == 5


def test_poster_url_opened_in_a_browser_lands_on_html(api, world):
    response = api.get(f"/q/{world['tokens']['a']}")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<html" in page
    # whoever reads this has just scanned with WeChat's own scanner: the page says where to scan instead
    assert "请在「湾区绿色积分」小程序中点击「扫码打卡」" in page
    assert "微信扫一扫" not in page


# --- once per point per local day ------------------------------------------------------------------------------


def test_same_point_twice_a_day_is_already_claimed(api, clock, world):
    resident = api.resident()
    first = scan_ok(api, resident, world["tokens"]["a"])
    checkin = db.session.scalar(sa.select(Checkin))
    entry = db.session.get(LedgerEntry, first["entry_id"])
    assert (entry.ref_type, entry.ref_id) == ("checkin", str(checkin.id))  # the claimed slot is the reference
    assert (checkin.resident_id, checkin.collection_point_id) == (resident.id, world["a"])
    clock.advance(hours=5)
    assert_error(scan(api, resident, world["tokens"]["a"]), 409, "already_claimed")
    assert balance(api, resident) == 5
    assert count(Checkin) == 1
    # another resident is not affected
    assert scan_ok(api, api.resident(), world["tokens"]["a"])["balance"] == 5
    # the next local day the same point counts again
    clock.set(datetime(2026, 6, 16, 8, 0, tzinfo=SHANGHAI))
    again = scan_ok(api, resident, world["tokens"]["a"])
    assert (again["balance"], again["day"]) == (10, "2026-06-16")


def test_a_resident_lists_their_own_check_ins_of_a_day(api, clock, world):
    """What the map marks as done today; nobody else's, and only a resident's own."""
    me, neighbour = api.resident(), api.resident()
    scan_ok(api, me, world["tokens"]["a"])
    clock.advance(minutes=5)
    scan_ok(api, me, world["tokens"]["b"])
    scan_ok(api, neighbour, world["tokens"]["c"])
    clock.set(datetime(2026, 6, 16, 8, 0, tzinfo=SHANGHAI))
    scan_ok(api, me, world["tokens"]["c"])
    mine = api.get("/me/checkins", as_=me).get_json()
    assert [(c["collection_point_id"], c["day"]) for c in mine["items"]] == [
        (world["c"], "2026-06-16"), (world["b"], "2026-06-15"), (world["a"], "2026-06-15"),
    ]  # fmt: skip
    assert {c["resident_id"] for c in mine["items"]} == {me.id}
    assert [c["collection_point_name"] for c in mine["items"]] == ["恒康丙站", "恒康乙站", "恒康甲站"]  # for the list
    renamed = api.patch(f"/collection-points/{world['a']}", as_=world["admin"], json={"name": "恒康甲站（东门）"})
    assert renamed.status_code == 200, renamed.get_json()
    assert api.get("/me/checkins", as_=me).get_json()["items"][-1]["collection_point_name"] == "恒康甲站（东门）"
    that_day = api.get("/me/checkins?day=2026-06-15&limit=1", as_=me).get_json()
    assert [c["collection_point_id"] for c in that_day["items"]] == [world["b"]]
    rest = api.get(f"/me/checkins?day=2026-06-15&limit=1&cursor={that_day['next']}", as_=me).get_json()
    assert ([c["collection_point_id"] for c in rest["items"]], rest["next"]) == ([world["a"]], None)
    assert api.get("/me/checkins?day=2026-06-17", as_=me).get_json() == {"items": [], "next": None}
    assert_error(api.get("/me/checkins"), 401, "unauthorized")
    assert_error(api.get("/me/checkins", as_=world["worker"]), 403, "forbidden")
    assert_error(api.get("/me/checkins?day=tomorrow", as_=me), 422, "validation_error")


def adjust(api, admin, resident, delta: int = 1) -> LedgerEntry:
    response = api.post(f"/residents/{resident.id}/adjustments", as_=admin, json={"delta": delta, "reason": "补发积分"})
    assert response.status_code == 201, response.get_json()
    return db.session.get(LedgerEntry, response.get_json()["id"])


def test_a_scan_that_waited_for_its_account_is_dated_after_the_entry_before_it(api, clock, world):
    """Another server, or a request that took the account's lock first, dated an entry a moment later: the chain's
    order stays its time order, and the check-in keeps its own moment and day."""
    resident = api.resident()
    clock.advance(seconds=5)
    before = adjust(api, world["admin"], resident)
    clock.advance(seconds=-3)
    answer = scan_ok(api, resident, world["tokens"]["a"])
    entry = db.session.get(LedgerEntry, answer["entry_id"])
    assert entry.created_at == before.created_at == datetime(2026, 6, 15, 10, 0, 5, tzinfo=SHANGHAI)
    assert db.session.scalar(sa.select(Checkin.created_at)) == datetime(2026, 6, 15, 10, 0, 2, tzinfo=SHANGHAI)
    assert answer["day"] == "2026-06-15"
    assert verify_ledger().ok


def test_a_scan_dated_before_midnight_once_its_account_has_passed_it_is_refused_to_be_retried(
    api, clock, world, caplog
):
    """The scan counted its day (check-in, caps) before it waited for the account, which meanwhile took an entry
    after midnight: it is refused whole, and the retry counts on the new day. One log line says why."""
    resident = api.resident()
    midnight = datetime(2026, 6, 16, tzinfo=SHANGHAI)
    clock.set(midnight + timedelta(seconds=1))
    adjust(api, world["admin"], resident)
    clock.set(midnight - timedelta(seconds=1))
    caplog.clear()
    response = scan(api, resident, world["tokens"]["a"])
    assert_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "1"
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.endswith(
        "posting dated 2026-06-15 15:59:59+00:00 refused: its account's last entry is dated 2026-06-15 16:00:01+00:00, "
        "on the next day"
    )
    assert (count(Checkin), count(LedgerEntry), count(DailyEarning)) == (0, 1, 0)
    clock.set(midnight + timedelta(seconds=2))
    assert scan_ok(api, resident, world["tokens"]["a"])["day"] == "2026-06-16"
    assert verify_ledger().ok


def publish_checkin_rule(api, admin, clock, **changes) -> None:
    response = api.post(
        "/rules", as_=admin, json={"activity": "checkin:sorting", "source": "测试：调整打卡积分", **changes}
    )
    assert response.status_code == 201, response.get_json()
    clock.advance(seconds=11)  # in force once every worker's rule cache has seen it


def test_a_check_in_rule_worth_nothing_still_counts_the_visit_once_a_day(api, clock, world):
    resident = api.resident()
    scan_ok(api, resident, world["tokens"]["a"])
    publish_checkin_rule(api, world["admin"], clock, points=0)  # an admin pauses check-in points
    paused = scan_ok(api, resident, world["tokens"]["b"])
    assert (paused["points"], paused["co2e_g"], paused["balance"], paused["entry_id"]) == (0, 0, 5, None)
    assert count(Checkin) == 2
    assert count(LedgerEntry) == 1
    assert_error(scan(api, resident, world["tokens"]["b"]), 409, "already_claimed")
    # No fixed points and no grams: also worth nothing, and no 500.
    publish_checkin_rule(api, world["admin"], clock, points=None)
    assert scan_ok(api, resident, world["tokens"]["c"])["points"] == 0
    assert balance(api, resident) == 5
    # grams that round to no points are not claimed either: the answer matches the account
    publish_checkin_rule(api, world["admin"], clock, points=None, co2e_g_per_unit=40)  # 0.4 points → 0
    other = api.resident()
    body = scan_ok(api, other, world["tokens"]["a"])
    assert (body["points"], body["co2e_g"]) == (0, 0)
    assert api.get("/me", as_=other).get_json()["co2e_g"] == 0


def test_a_check_in_rule_without_fixed_points_converts_its_grams(api, clock, world):
    publish_checkin_rule(api, world["admin"], clock, points=None, co2e_g_per_unit=350)
    body = scan_ok(api, api.resident(), world["tokens"]["a"])
    assert (body["points"], body["co2e_g"]) == (4, 350)  # 350 g → 3.5 points, rounded half up
    assert db.session.get(LedgerEntry, body["entry_id"]).co2e_g == 350


def test_a_check_in_rounds_its_grams_and_its_points_once_each_from_the_exact_grams(api, clock, world):
    publish_checkin_rule(api, world["admin"], clock, points=None, co2e_g_per_unit="349.5")
    body = scan_ok(api, api.resident(), world["tokens"]["a"])
    # 349.5 g → 350 g, half up; 349.5 × 10 / 1000 = 3.495 → 3 points (not 350 g → 3.5 → 4: rounded twice)
    assert (body["points"], body["co2e_g"]) == (3, 350)
    assert db.session.get(LedgerEntry, body["entry_id"]).co2e_g == 350


def test_check_in_grams_follow_the_configured_rate(api, app, clock, monkeypatch, world):
    monkeypatch.setitem(app.config, "POINTS_PER_KG_CO2E", 25)
    resident = api.resident()
    assert scan_ok(api, resident, world["tokens"]["a"])["points"] == 5  # fixed points do not scale with the rate
    publish_checkin_rule(api, world["admin"], clock, points=None, co2e_g_per_unit=200)
    assert scan_ok(api, resident, world["tokens"]["b"])["points"] == 5  # 200 g × 25 / 1000 = 5 (2 at 10 a kg)
    assert balance(api, resident) == 10


def test_local_midnight_splits_days_not_utc_midnight(api, clock, world):
    resident = api.resident()
    before, after = datetime(2026, 6, 15, 23, 59, tzinfo=SHANGHAI), datetime(2026, 6, 16, 0, 1, tzinfo=SHANGHAI)
    assert before.astimezone(UTC).date() == after.astimezone(UTC).date()
    clock.set(before)
    assert scan_ok(api, resident, world["tokens"]["a"])["day"] == "2026-06-15"
    clock.set(after)
    assert scan_ok(api, resident, world["tokens"]["a"])["day"] == "2026-06-16"
    assert balance(api, resident) == 10

    # and the other way round: one local day across a UTC midnight is still one day
    late, early = datetime(2026, 6, 17, 7, 59, tzinfo=SHANGHAI), datetime(2026, 6, 17, 8, 1, tzinfo=SHANGHAI)
    assert late.astimezone(UTC).date() != early.astimezone(UTC).date()
    clock.set(late)
    scan_ok(api, resident, world["tokens"]["b"])
    clock.set(early)
    assert_error(scan(api, resident, world["tokens"]["b"]), 409, "already_claimed")
    assert balance(api, resident) == 15


def test_a_check_in_its_entry_and_its_cap_count_share_one_moment_across_local_midnight(api, clock, world):
    """A scan that begins a few reads of the clock before local midnight dates its slot, its entry and the day its
    cap counts on alike; reading the clock again for the entry put the entry (and the count) on the next day."""
    midnight = datetime(2026, 6, 16, tzinfo=SHANGHAI)
    residents = [api.resident() for _ in range(12)]
    for offset_ms, resident in enumerate(residents, start=1):
        app_clock.set_clock(Ticking(midnight - timedelta(milliseconds=offset_ms)))
        answer = scan_ok(api, resident, world["tokens"]["a"])
        entry = db.session.get(LedgerEntry, answer["entry_id"])
        counted = db.session.scalars(sa.select(DailyEarning.day).filter_by(account_id=entry.account_id)).all()
        assert {answer["day"], local_day(entry.created_at, "Asia/Shanghai").isoformat()} == {answer["day"]}
        assert {day.isoformat() for day in counted} == {answer["day"]}
    app_clock.set_clock(clock)


def test_daily_checkin_cap_is_ten_points(api, clock, world):
    resident = api.resident()
    scan_ok(api, resident, world["tokens"]["a"])
    assert scan_ok(api, resident, world["tokens"]["b"])["balance"] == 10
    error = assert_error(scan(api, resident, world["tokens"]["c"]), 409, "cap_reached")
    assert error["message"].endswith("今天的积分已达上限（每天 10 积分）")
    assert (error["details"]["cap"], error["details"]["remaining"]) == (10, 0)
    assert balance(api, resident) == 10
    # the refused check-in left no row behind: trying again is still the cap, not already_claimed
    assert_error(scan(api, resident, world["tokens"]["c"]), 409, "cap_reached")
    assert count(Checkin) == 2
    clock.set(datetime(2026, 6, 16, 0, 0, tzinfo=SHANGHAI))
    assert scan_ok(api, resident, world["tokens"]["c"])["balance"] == 15


def test_a_reversed_check_in_gives_its_cap_room_back_but_not_its_visit(api, world):
    resident = api.resident()
    first = scan_ok(api, resident, world["tokens"]["a"])
    scan_ok(api, resident, world["tokens"]["b"])
    reason = {"reason": "误扫"}
    response = api.post(f"/ledger/entries/{first['entry_id']}/reverse", as_=world["admin"], json=reason)
    assert response.status_code == 201, response.get_json()
    assert scan_ok(api, resident, world["tokens"]["c"])["balance"] == 10  # 5 - 5 + 5 + 5
    assert_error(scan(api, resident, world["tokens"]["a"]), 409, "already_claimed")  # the visit still happened


# --- who checked in where: the community's view -----------------------------------------------------------------


def checkins(api, caller, point_id: int, query: str = "") -> dict:
    response = api.get(f"/collection-points/{point_id}/checkins{query}", as_=caller)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_points_check_ins_are_listed_newest_first_a_page_at_a_time(api, clock, world):
    """A worker sees who checked in at a point and when: a poster shared in a group chat shows up as residents
    checking in from far away, or many of them at once, and is the worker's cue to rotate it."""
    clock.set(datetime(2026, 6, 15, 9, 0, tzinfo=SHANGHAI))
    first, second, elsewhere = api.resident(), api.resident(), api.resident()
    scan_ok(api, first, world["tokens"]["a"], lat=31.2304, lng=121.4737)
    clock.advance(minutes=5)
    scan_ok(api, second, world["tokens"]["a"])
    scan_ok(api, elsewhere, world["tokens"]["b"])
    page = checkins(api, world["worker"], world["a"])
    assert page["next"] is None
    assert [(c["resident_id"], c["collection_point_id"], c["day"]) for c in page["items"]] == [
        (second.id, world["a"], "2026-06-15"), (first.id, world["a"], "2026-06-15")
    ]  # fmt: skip
    assert page["items"][0]["created_at"] == "2026-06-15T01:05:00+00:00"
    assert set(page["items"][0]) == {
        "id",
        "resident_id",
        "collection_point_id",
        "collection_point_name",
        "day",
        "created_at",
    }  # fmt: skip  (no position)
    one = checkins(api, world["admin"], world["a"], "?limit=1")
    assert [c["resident_id"] for c in one["items"]] == [second.id]
    rest = checkins(api, world["admin"], world["a"], f"?limit=1&cursor={one['next']}")
    assert ([c["resident_id"] for c in rest["items"]], rest["next"]) == ([first.id], None)
    assert [c["resident_id"] for c in checkins(api, world["admin"], world["b"])["items"]] == [elsewhere.id]


def test_a_points_check_ins_of_one_local_day(api, clock, world):
    resident = api.resident()
    clock.set(datetime(2026, 6, 15, 23, 59, 59, tzinfo=SHANGHAI))
    late = scan_ok(api, resident, world["tokens"]["a"])
    clock.advance(seconds=1)  # midnight in Shanghai, 16:00 UTC: a new day, and a new check-in
    early = scan_ok(api, resident, world["tokens"]["a"])
    days = lambda day: [c["day"] for c in checkins(api, world["worker"], world["a"], f"?day={day}")["items"]]  # noqa: E731
    assert (late["day"], early["day"]) == ("2026-06-15", "2026-06-16")
    assert days("2026-06-15") == ["2026-06-15"]
    assert days("2026-06-16") == ["2026-06-16"]
    assert days("2026-06-17") == []


def test_a_points_check_ins_are_for_its_community_staff_only(api, world):
    path = f"/collection-points/{world['a']}/checkins"
    scan_ok(api, api.resident(), world["tokens"]["a"])
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    collector = api.staff("collector", collection_point_ids=[world["a"]])  # weighs deposits; check-ins are not theirs
    for caller in (outsider, collector, api.resident()):
        assert_error(api.get(path, as_=caller), 403, "forbidden")
    assert_error(api.get(path), 401, "unauthorized")
    assert len(checkins(api, world["worker"], world["a"])["items"]) == 1
    assert checkins(api, outsider, world["x"]) == {"items": [], "next": None}
    assert_error(api.get("/collection-points/999999/checkins", as_=world["admin"]), 404, "not_found")
    for query in ("?day=2026-13-01", "?day=yesterday", "?cursor=%%%", "?limit=0", "?limit=101"):
        assert_error(api.get(path + query, as_=world["admin"]), 422, "validation_error")


# --- geofence ----------------------------------------------------------------------------------------------------


def test_geofence(api, world):
    fenced = make_point(api, world["admin"], "围栏站", lat=31.2304, lng=121.4737, geofence_m=100)
    token = poster(api, world["admin"], fenced)["token"]
    resident = api.resident()
    # 0.009° of latitude is about 1 km
    error = assert_error(scan(api, resident, token, lat=31.2394, lng=121.4737), 403, "too_far")
    assert error["details"]["geofence_m"] == 100
    assert 990 <= error["details"]["distance_m"] <= 1010
    away = error["details"]["distance_m"]  # the resident reads how far to walk, not only "too far"
    assert error["message"] == f"您距离该回收点约 {away} 米，需在 100 米以内扫码，请走近后再试"
    assert balance(api, resident) == 0
    assert count(Checkin) == 0
    # about 55 m away is inside the fence
    assert scan_ok(api, resident, token, lat=31.2309, lng=121.4737)["balance"] == 5
    # a fenced point needs the position: a scan without one would pass any fence
    stranger = api.resident()
    error = assert_error(scan(api, stranger, token), 422, "validation_error")
    assert "定位" in error["details"]["fields"]["lat"][0]
    assert error["message"] == error["details"]["fields"]["lat"][0]  # what the mini-program shows says what to do
    assert error["details"]["reason"] == "location_required"  # and what it keys on to ask for the position
    assert balance(api, stranger) == 0
    assert count(Checkin) == 1
    # a half position is refused
    error = assert_error(scan(api, api.resident(), token, lat=31.2304), 422, "validation_error")
    assert "lat" in error["details"]["fields"]
    assert "reason" not in error["details"]  # a malformed body, not a missing position


def test_a_fenced_point_checked_in_today_says_so_before_asking_for_a_position_or_a_walk(api, world):
    """Granting the position, or walking back to the point, would earn nothing today: the answer says that first."""
    fenced = make_point(api, world["admin"], "围栏站", lat=31.2304, lng=121.4737, geofence_m=100)
    token = poster(api, world["admin"], fenced)["token"]
    resident = api.resident()
    scan_ok(api, resident, token, lat=31.2305, lng=121.4737)
    for where in ({}, {"lat": 31.2394, "lng": 121.4737}):
        error = assert_error(scan(api, resident, token, **where), 409, "already_claimed")
        assert error["message"] == "今天已在该回收点打卡，明天再来吧"
    # another resident still hears about the fence
    assert_error(scan(api, api.resident(), token), 422, "validation_error")
    assert_error(scan(api, api.resident(), token, lat=31.2394, lng=121.4737), 403, "too_far")
    assert count(Checkin) == 1


def test_where_a_resident_stood_answers_the_fence_and_is_not_kept(api, world):
    """A position is personal information (PIPL: collect what the purpose needs): it is read to answer the geofence,
    and nothing stores it, at a fenced point or elsewhere."""
    fenced = make_point(api, world["admin"], "围栏站", lat=31.2304, lng=121.4737, geofence_m=100)
    open_point = make_point(api, world["admin"], "无围栏站")
    resident = api.resident()
    scan_ok(api, resident, poster(api, world["admin"], fenced)["token"], lat=31.23051, lng=121.47372)
    scan_ok(api, resident, poster(api, world["admin"], open_point)["token"], lat=31.98765, lng=121.12345)
    rows = db.session.execute(sa.select(Checkin.__table__)).all()
    assert len(rows) == 2
    stored = " ".join(str(value) for row in rows for value in row)
    for figure in ("31.2305", "121.4737", "31.9876", "121.1234"):
        assert figure not in stored


def test_a_refused_scan_is_one_log_line_naming_the_resident_the_point_and_why(api, world, caplog):
    """ "I scanned and got nothing": support finds the refusal by the request id the app showed, or by the resident."""
    fenced = make_point(api, world["admin"], "围栏站", lat=31.2304, lng=121.4737, geofence_m=100)
    token = poster(api, world["admin"], fenced)["token"]
    resident = api.resident()
    caplog.clear()
    response = scan(api, resident, token, lat=31.2394, lng=121.4737)
    error = assert_error(response, 403, "too_far")
    [line] = [r for r in caplog.records if r.getMessage().startswith("refused ")]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f"refused POST /api/v1/scans 403 too_far by=resident:{resident.id} point={fenced} "
        f"distance_m={error['details']['distance_m']} geofence_m=100"
    )
    caplog.clear()
    assert_error(scan(api, resident, "not a poster"), 422, "invalid_qr")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert line == f"refused POST /api/v1/scans 422 invalid_qr by=resident:{resident.id} reason=not_a_poster"


def test_too_far_never_reports_the_fence_itself_as_the_distance(api, world):
    """Compared unrounded, reported rounded up: 300.4 m away from a 300 m fence reads 301 m, not "300 m, must be
    within 300 m"."""
    fenced = make_point(api, world["admin"], "三百米站", lat=31.0, lng=121.0, geofence_m=300)
    token = poster(api, world["admin"], fenced)["token"]
    just_outside = 31.0 + 300.4 / 111_194.93  # metres per degree of latitude on the haversine's sphere
    error = assert_error(scan(api, api.resident(), token, lat=just_outside, lng=121.0), 403, "too_far")
    assert (error["details"]["distance_m"], error["details"]["geofence_m"]) == (301, 300)


def test_position_without_a_fence_is_accepted(api, world):
    placed = make_point(api, world["admin"], "无围栏站", lat=31.2304, lng=121.4737)
    token = poster(api, world["admin"], placed)["token"]
    assert scan_ok(api, api.resident(), token, lat=35.0, lng=120.0)["points"] == 5


# --- forged tokens ------------------------------------------------------------------------------------------------


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


def _flip_first_sig_char(token: str) -> str:
    head, _, sig = token.rpartition(".")
    return f"{head}.{_flip(sig[0])}{sig[1:]}"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda t, a: t[:-1] + _flip(t[-1]), id="last-sig-char"),
        pytest.param(lambda t, a: _flip_first_sig_char(t), id="first-sig-char"),
        pytest.param(lambda t, a: t.replace(f".{a['a']}.", f".{a['b']}."), id="other-point-id"),
        pytest.param(lambda t, a: t.replace(f".{a['a']}.", ".987654."), id="nonexistent-point"),
        pytest.param(lambda t, a: "p1.987654." + "A" * 22, id="forged-nonexistent"),
        pytest.param(lambda t, a: t.replace(f".{a['a']}.", ".99999999999999999."), id="id-beyond-the-database"),
        pytest.param(lambda t, a: t.replace("p1.", "p2.", 1), id="other-version"),
        pytest.param(lambda t, a: t.replace("p1.", "e1.", 1), id="other-kind"),
        pytest.param(lambda t, a: "garbage", id="garbage"),
        pytest.param(lambda t, a: "https://evil.example/x/" + t, id="not-a-q-link"),
        pytest.param(lambda t, a: t + ".extra", id="extra-field"),
        pytest.param(lambda t, a: "p1.0" + t[2:], id="leading-zero"),
        pytest.param(lambda t, a: "点" * 40, id="non-ascii"),
    ],
)
def test_forged_tokens_are_invalid_qr(api, world, forge):
    token = world["tokens"]["a"]
    forged = forge(token, world)
    assert forged != token
    resident = api.resident()
    assert_error(scan(api, resident, forged), 422, "invalid_qr")
    assert balance(api, resident) == 0
    assert count(Checkin) == 0


def test_member_code_is_not_a_poster(api, world):
    resident = api.resident()
    code = api.get("/me/member-code", as_=resident).get_json()["token"]
    error = assert_error(scan(api, resident, code), 422, "invalid_qr")
    assert error["message"] == "这是会员码，请出示给回收员；分类打卡请扫描回收点张贴的海报"
    assert error["details"] == {"reason": "member_code"}  # for the app to key on, as the message is for people
    error = assert_error(scan(api, resident, "https://example.cn/some/other/page"), 422, "invalid_qr")
    assert error["message"] == "这不是回收点的海报二维码，分类打卡请扫描回收点张贴的海报"
    assert error["details"] == {"reason": "not_a_poster"}
    # a well-formed poster for a real point, signed with a key the server does not use
    wrong_key = qr.static_token(qr.POINT, world["b"], qr.derive_key("not-the-server-secret", "point", "x"))
    assert_error(scan(api, resident, wrong_key), 422, "invalid_qr")
    assert balance(api, resident) == 0


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 42}, {"token": "x" * 513}, {"token": "t", "extra": 1}])
def test_malformed_scan_bodies(api, body):
    error = assert_error(api.post("/scans", as_=api.resident(), json=body), 422, "validation_error")
    assert error["details"]["fields"]


def test_staff_and_anonymous_cannot_scan(api, world):
    token = world["tokens"]["a"]
    collector = api.staff("collector", collection_point_ids=[world["a"]])
    for caller in (world["admin"], world["worker"], collector):
        assert_error(api.post("/scans", as_=caller, json={"token": token}), 403, "forbidden")
    assert_error(api.post("/scans", json={"token": token}), 401, "unauthorized")
    assert count(Checkin) == 0


def test_frozen_resident_cannot_scan(api, world):
    resident = api.resident()
    response = api.patch(
        f"/residents/{resident.id}", as_=world["admin"], json={"status": "frozen", "reason": "测试冻结"}
    )
    assert response.status_code == 200, response.get_json()
    assert_error(scan(api, resident, world["tokens"]["a"]), 403, "account_frozen")
    assert count(Checkin) == 0


# --- idempotency --------------------------------------------------------------------------------------------------


def test_idempotent_scan_replays_and_credits_once(api, world):
    resident = api.resident()
    headers = {"Idempotency-Key": "scan-1"}
    body = {"token": world["tokens"]["a"]}
    first = api.post("/scans", as_=resident, json=body, headers=headers)
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    second = api.post("/scans", as_=resident, json=body, headers=headers)
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert balance(api, resident) == 5
    assert count(Checkin) == 1

    other = {"token": world["tokens"]["b"]}
    assert_error(api.post("/scans", as_=resident, json=other, headers=headers), 409, "idempotency_conflict")
    assert balance(api, resident) == 5
    # without the key a repeat is judged on its own: already claimed
    assert_error(api.post("/scans", as_=resident, json=body), 409, "already_claimed")
    # keys belong to their resident: the same key from someone else is a new request
    neighbour = api.resident()
    response = api.post("/scans", as_=neighbour, json=body, headers=headers)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert balance(api, neighbour) == 5


def test_a_failed_scan_is_not_stored_under_its_key(api, world):
    resident = api.resident()
    scan_ok(api, resident, world["tokens"]["a"])
    headers = {"Idempotency-Key": "scan-after-claim"}
    body = {"token": world["tokens"]["a"]}
    assert_error(api.post("/scans", as_=resident, json=body, headers=headers), 409, "already_claimed")
    assert_error(api.post("/scans", as_=resident, json=body, headers=headers), 409, "already_claimed")
    assert balance(api, resident) == 5


# --- concurrency (PostgreSQL) ---------------------------------------------------------------------------------------


@pg_concurrency
def test_twenty_parallel_replays_of_one_scan_key_credit_once(api, app, world):
    resident = api.resident()
    headers = {**resident.auth, "Idempotency-Key": "rush-scan"}
    body = {"token": world["tokens"]["a"]}
    threads = 20
    responses = race(app, lambda client, _: client.post("/api/v1/scans", json=body, headers=headers), threads)
    assert [r.status_code for r in responses] == [201] * threads, [r.get_json() for r in responses]
    assert len({r.get_data() for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    db.session.expire_all()
    assert balance(api, resident) == 5
    assert count(Checkin) == 1
    assert count(LedgerEntry) == 1


@pg_concurrency
def test_twenty_parallel_scans_without_key_claim_once(api, app, world):
    resident = api.resident()
    body = {"token": world["tokens"]["a"]}
    threads = 20
    responses = race(app, lambda client, _: client.post("/api/v1/scans", json=body, headers=resident.auth), threads)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (threads - 1), [r.get_json() for r in responses]
    assert {r.get_json()["error"]["code"] for r in responses if r.status_code == 409} == {"already_claimed"}
    db.session.expire_all()
    assert balance(api, resident) == 5
    assert count(Checkin) == 1


def test_a_resident_sees_todays_caps_and_what_is_left_of_them(api, clock, world):
    """What a scan can still credit today, before it is refused: the mini-program shows 今日还可获得."""
    me, neighbour = api.resident(), api.resident()

    def caps(who) -> dict:
        response = api.get("/me/caps", as_=who)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    fresh = caps(me)
    assert fresh["day"] == "2026-06-15"
    assert fresh["items"][0] == {"activity": "daily:total", "title": "全部活动合计", "cap": 500, "used": 0,
                                 "remaining": 500}  # fmt: skip
    counters = {c["activity"]: c for c in fresh["items"]}
    assert counters["checkin:sorting"] == {"activity": "checkin:sorting", "title": "分类打卡", "cap": 10, "used": 0,
                                           "remaining": 10}  # fmt: skip
    assert counters["sorting:paper"]["cap"] == 200
    assert [c["activity"] for c in fresh["items"][1:]] == sorted(c["activity"] for c in fresh["items"][1:])
    assert all(c["cap"] is not None for c in fresh["items"])  # uncapped activities are not counters

    scan_ok(api, me, world["tokens"]["a"])
    scan_ok(api, me, world["tokens"]["b"])
    counters = {c["activity"]: c for c in caps(me)["items"]}
    assert (counters["checkin:sorting"]["used"], counters["checkin:sorting"]["remaining"]) == (10, 0)
    assert (counters["daily:total"]["used"], counters["daily:total"]["remaining"]) == (10, 490)
    assert_error(scan(api, me, world["tokens"]["c"]), 409, "cap_reached")  # as the counter said
    assert {c["used"] for c in caps(neighbour)["items"]} == {0}  # one's own counters only

    clock.set(datetime(2026, 6, 16, 0, 0, tzinfo=SHANGHAI))
    tomorrow = caps(me)
    assert tomorrow["day"] == "2026-06-16"
    assert {c["used"] for c in tomorrow["items"]} == {0}
    assert_error(api.get("/me/caps", as_=world["worker"]), 403, "forbidden")
    assert_error(api.get("/me/caps"), 401, "unauthorized")


def test_a_scan_refused_for_an_account_thawed_by_now_says_to_scan_again(api, world):
    """The claim read the account frozen; a thaw committed before the refusal was explained. "Checked in here today"
    would be false: nothing was written, and the scan may be sent again."""
    from app.errors import AccountFrozen, AlreadyClaimed, InvalidState
    from app.people.models import Resident
    from app.sorting.service import _checkin_refusal, _point_row

    me = api.resident()
    point = _point_row(world["a"])
    today = local_day(app_clock.utcnow(), "Asia/Shanghai")
    refusal = _checkin_refusal(me.id, point, today)
    assert isinstance(refusal, InvalidState)
    assert refusal.message == "账户状态刚刚变更，请重新登录后再扫码"
    db.session.execute(sa.update(Resident).where(Resident.id == me.id).values(status="frozen"))
    assert isinstance(_checkin_refusal(me.id, point, today), AccountFrozen)
    db.session.rollback()
    scan_ok(api, me, world["tokens"]["a"])
    assert isinstance(_checkin_refusal(me.id, point, today), AlreadyClaimed)
    assert isinstance(_checkin_refusal(me.id, point, today + timedelta(days=1)), InvalidState)


@pg_concurrency
def test_a_freeze_committed_during_a_scan_is_seen(api, app, world):
    """The check-in reads the account's state under FOR SHARE, as a deposit does: it waits for an uncommitted freeze
    (the caller was authenticated while the account was still active), then sees it and credits nothing."""
    resident = api.resident()
    response = during_an_uncommitted_freeze(app, resident.id, lambda: scan(api, resident, world["tokens"]["a"]))
    assert_error(response, 403, "account_frozen")
    assert count(Checkin) == 0
    assert count(LedgerEntry) == 0


@pg_concurrency
def test_a_point_being_edited_does_not_hold_up_its_check_ins(api, app, world):
    """An edit holds the point's row lock (FOR NO KEY UPDATE) for its transaction; a check-in's reference to the point
    (KEY SHARE) does not wait for it."""
    import threading

    from app.auth.guards import Actor
    from app.sorting import service

    locked, release = threading.Event(), threading.Event()

    def edit_in_flight():
        with app.app_context():
            service._managed_point(Actor(kind="system", id=0, role="admin"), world["a"])
            locked.set()
            release.wait(timeout=10)
            db.session.rollback()
            db.session.remove()

    editor = threading.Thread(target=edit_in_flight)
    editor.start()
    assert locked.wait(timeout=5)
    answer: dict = {}
    scanner = threading.Thread(target=lambda: answer.update(response=scan(api, api.resident(), world["tokens"]["a"])))
    scanner.start()
    scanner.join(timeout=5)
    finished = not scanner.is_alive()
    release.set()
    editor.join(timeout=10)
    scanner.join(timeout=10)
    assert finished
    assert answer["response"].status_code == 201


def test_a_device_kind_token_naming_a_real_point_is_not_a_poster(api, world):
    """Another kind's well-formed token that names a real point is not a poster: not a "replaced" poster either,
    which would send staff to reprint one."""
    token = world["tokens"]["a"].replace("p1.", "d1.", 1)
    error = assert_error(scan(api, api.resident(), token), 422, "invalid_qr")
    assert error["details"] == {"reason": "not_a_poster"}
    assert count(Checkin) == 0
