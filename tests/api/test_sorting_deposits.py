"""Member codes and weighed deposits recorded by collectors (POST /deposits).

Expected numbers are worked by hand from FACTORS.md: grams = Σ factor × kg, co2e_g = round_half_up(grams),
points = round_half_up(grams × 10 / 1000), rounded once on the whole deposit."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from io import BytesIO
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import zxingcpp
from PIL import Image

from app import clock as app_clock
from app.audit.models import AuditEvent
from app.auth.guards import Actor
from app.carbon.models import Rule
from app.clock import local_day, utcnow
from app.db import db
from app.errors import Forbidden, NotFound
from app.ledger.models import Account, DailyEarning, LedgerEntry
from app.ledger.verify import verify_ledger
from app.people.models import Resident
from app.sorting import service as sorting
from app.sorting.models import Deposit, DepositCorrection, DepositItem
from app.sorting.service import clear_point_cache
from tests.conftest import (
    SHANGHAI,
    Ticking,
    assert_error,
    community_id,
    count,
    during_an_uncommitted,
    during_an_uncommitted_freeze,
    make_point,
    pg_concurrency,
    race,
)


def me(api, resident) -> dict:
    response = api.get("/me", as_=resident)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def lines(*pairs) -> list[dict]:
    return [{"category": category, "weight_g": weight} for category, weight in pairs]


@pytest.fixture
def world(api):
    admin = api.staff("admin")
    a = make_point(api, admin, "恒康甲站")
    b = make_point(api, admin, "恒康乙站")
    glass_only = make_point(api, admin, "玻璃站", categories=["glass"])
    return {
        "admin": admin,
        "a": a,
        "b": b,
        "glass_only": glass_only,
        "collector": api.staff("collector", collection_point_ids=[a]),
        "resident": api.resident(),
    }


def deposit(api, world, items, *, point=None, collector=None, resident=None, code=None, headers=None):
    code = code or api.member_code(resident or world["resident"])
    body = {"member_code": code, "collection_point_id": point or world["a"], "items": items}
    return api.post("/deposits", as_=collector or world["collector"], json=body, headers=headers)


def deposit_ok(api, world, items, **kw) -> dict:
    response = deposit(api, world, items, **kw)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# --- member codes -------------------------------------------------------------------------------------------------


def test_member_code_is_short_lived_and_signed(api, clock, world):
    response = api.get("/me/member-code", as_=world["resident"])
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "expires_at", "expires_in"}
    assert datetime.fromisoformat(body["expires_at"]) == clock.now + timedelta(seconds=120)
    assert body["expires_in"] == 120  # counted from this answer: a phone whose clock is off still refreshes in time
    clock.advance(seconds=0.9)  # a code expires on a whole second: what is left is what it says, never more
    assert api.get("/me/member-code", as_=world["resident"]).get_json()["expires_in"] == 119
    assert body["token"].startswith("m1.")
    assert response.headers["Cache-Control"] == "no-store"  # a code is one person's and short-lived
    # every request gives a fresh code
    assert api.member_code(world["resident"]) != body["token"]
    assert_error(api.get("/me/member-code"), 401, "unauthorized")
    assert_error(api.get("/me/member-code", as_=world["collector"]), 403, "forbidden")


def test_member_code_png_decodes_to_a_working_code(api, clock, world):
    response = api.get("/me/member-code.png", as_=world["resident"])
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    # the image's own code's expiry, for an app that shows the image (the JSON answer makes another code)
    assert datetime.fromisoformat(response.headers["X-Expires-At"]) == clock.now + timedelta(seconds=120)
    assert response.headers["X-Expires-In"] == "120"
    found = zxingcpp.read_barcodes(Image.open(BytesIO(response.get_data())))
    assert len(found) == 1
    code = found[0].text
    assert code.startswith("m1.")
    assert deposit_ok(api, world, lines(("paper", 1000)), code=code)["resident_id"] == world["resident"].id


def test_member_code_png_draws_the_code_the_json_gave_when_asked(api, clock, world):
    """An app that keeps the token and its countdown from GET /me/member-code shows that same code as an image."""
    code = api.get("/me/member-code", as_=world["resident"]).get_json()
    clock.advance(seconds=30)
    response = api.get(f"/me/member-code.png?token={code['token']}", as_=world["resident"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    [found] = zxingcpp.read_barcodes(Image.open(BytesIO(response.get_data())))
    assert found.text == code["token"]
    assert response.headers["X-Expires-At"] == code["expires_at"]
    assert response.headers["X-Expires-In"] == "90"
    # only one's own code, still valid, is drawn
    neighbour = api.member_code(api.resident())
    error = assert_error(api.get(f"/me/member-code.png?token={neighbour}", as_=world["resident"]), 422, "invalid_qr")
    assert error["message"] == "这不是您的会员码，请刷新"
    assert_error(api.get("/me/member-code.png?token=m1.garbage", as_=world["resident"]), 422, "invalid_qr")
    # the code itself is drawn, never the text around it (a URL of someone's choosing wrapping one's code)
    wrapped = quote(f"https://elsewhere.example/q/{code['token']}?utm=x", safe="")
    response = api.get(f"/me/member-code.png?token={wrapped}&t=1781488920123", as_=world["resident"])  # t: ignored
    assert response.status_code == 200, response.get_json()
    assert zxingcpp.read_barcodes(Image.open(BytesIO(response.get_data())))[0].text == code["token"]
    clock.advance(seconds=90)
    expired = api.get(f"/me/member-code.png?token={code['token']}", as_=world["resident"])
    assert assert_error(expired, 410, "qr_expired")["message"] == "会员码已过期，请刷新"
    # whether someone else's code has expired is not told either
    error = assert_error(api.get(f"/me/member-code.png?token={neighbour}", as_=world["resident"]), 422, "invalid_qr")
    assert error["message"] == "这不是您的会员码，请刷新"


def test_member_code_expires_after_two_minutes(api, clock, world):
    code, other = api.member_code(world["resident"]), api.member_code(world["resident"])
    clock.advance(seconds=119)
    assert deposit_ok(api, world, lines(("paper", 1000)), code=code)["points"] == 18
    clock.advance(seconds=2)  # 121 s after both were issued
    assert_error(deposit(api, world, lines(("paper", 1000)), code=other), 410, "qr_expired")
    assert me(api, world["resident"])["balance"] == 18
    assert count(Deposit) == 1


def test_a_late_retry_of_a_deposit_that_went_through_says_so_rather_than_expired(api, clock, world):
    """A collector whose answer was lost retries after the code's two minutes: 410 qr_expired would have them record
    the recyclables again with a fresh code, so a spent code says where it went, expired or not."""
    code = api.member_code(world["resident"])
    made = deposit_ok(api, world, lines(("paper", 1000)), code=code)
    clock.advance(seconds=300)
    late = assert_error(deposit(api, world, lines(("paper", 1000)), code=code), 409, "duplicate")
    assert late["details"] == {"deposit_id": made["id"], "points": made["points"]}
    assert f"编号 {made['id']}" in late["message"]
    elsewhere = api.staff("collector", collection_point_ids=[world["b"]])
    other = deposit(api, world, lines(("paper", 1000)), code=code, point=world["b"], collector=elsewhere)
    assert assert_error(other, 409, "duplicate")["message"] == "该会员码已使用，请让居民刷新会员码后重试"
    assert count(Deposit) == 1
    assert me(api, world["resident"])["balance"] == made["points"]


def test_expired_code_after_121_seconds(api, clock, world):
    code = api.member_code(world["resident"])
    clock.advance(seconds=121)
    assert_error(deposit(api, world, lines(("paper", 1000)), code=code), 410, "qr_expired")
    assert count(Deposit) == 0


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"), id="signature"),
        pytest.param(lambda c: c.replace(c.split(".")[2], str(int(c.split(".")[2]) + 3600), 1), id="longer-expiry"),
        pytest.param(lambda c: "m1.999999." + ".".join(c.split(".")[2:]), id="other-resident"),
        pytest.param(lambda c: "garbage", id="garbage"),
        pytest.param(lambda c: c.replace("m1.", "p1.", 1), id="other-kind"),
    ],
)
def test_tampered_member_code_is_invalid_qr(api, world, tamper):
    code = api.member_code(world["resident"])
    forged = tamper(code)
    assert forged != code
    refused = assert_error(deposit(api, world, lines(("paper", 1000)), code=forged), 422, "invalid_qr")
    assert refused["message"] == "这不是有效的会员码：请居民在小程序中打开「会员码」再扫"  # what to do, read aloud
    assert count(Deposit) == 0


def test_poster_token_is_not_a_member_code(api, world):
    poster = api.get(f"/collection-points/{world['a']}/qr", as_=world["admin"]).get_json()
    assert_error(deposit(api, world, lines(("paper", 1000)), code=poster["token"]), 422, "invalid_qr")
    assert_error(deposit(api, world, lines(("paper", 1000)), code=poster["url"]), 422, "invalid_qr")


def test_frozen_residents_code_is_refused(api, world):
    code = api.member_code(world["resident"])
    response = api.patch(
        f"/residents/{world['resident'].id}", as_=world["admin"], json={"status": "frozen", "reason": "测试冻结"}
    )
    assert response.status_code == 200, response.get_json()
    refused = assert_error(deposit(api, world, lines(("paper", 1000)), code=code), 403, "account_frozen")
    assert refused["message"] == "该居民账户已冻结，无法记录积分：请居民联系所在社区"
    assert count(Deposit) == 0


@pytest.mark.parametrize(
    ("status", "http", "code", "weight_g"),
    [
        ("frozen", 403, "account_frozen", 1000),
        ("frozen", 403, "account_frozen", 10),  # worth 0 points: no posting, still refused
        ("closed", 422, "invalid_qr", 1000),
    ],
)
def test_an_account_that_cannot_take_points_writes_nothing(api, world, status, http, code, weight_g):
    member_code = api.member_code(world["resident"])
    db.session.execute(sa.update(Resident).where(Resident.id == world["resident"].id).values(status=status))
    db.session.commit()
    assert_error(deposit(api, world, lines(("paper", weight_g)), code=member_code), http, code)
    assert (count(Deposit), count(DepositItem)) == (0, 0)


def test_a_member_code_for_no_resident_is_invalid(api, app, world):
    from app import qr

    key = qr.derive_key(app.config["QR_SECRET"], "member")
    orphan, _ = qr.member_code(987_654, key, utcnow(), ttl_s=120)
    assert_error(deposit(api, world, lines(("paper", 1000)), code=orphan), 422, "invalid_qr")
    assert count(Deposit) == 0


# --- amounts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "co2e_g", "points", "per_line_rounding"),
    [
        # 250 g paper = 440 g, 1700 g glass = 442 g, 730 g plastic = 1000.1 g → 1882.1 g → 18.821 → 19 points.
        # Rounding each line first would give 4 + 4 + 10 = 18.
        (lines(("paper", 250), ("glass", 1700), ("plastic", 730)), 1882, 19, 18),
        # 1250 g paper = 2200 g, 730 g plastic = 1000.1 g, 400 g glass = 104 g → 3304.1 g → 33.041 → 33 points.
        (lines(("paper", 1250), ("plastic", 730), ("glass", 400)), 3304, 33, 33),
        # 25 g textile = 50 g → 0.5 points → half up → 1 (banker's rounding would give 0).
        (lines(("textile", 25)), 50, 1, 1),
        # 100 g aluminium + 100 g ewaste + 100 g cardboard = 811 + 470 + 316 = 1597 g → 15.97 → 16.
        (lines(("aluminium", 100), ("ewaste", 100), ("cardboard", 100)), 1597, 16, 16),
        # 1 kg metal = 1830 g → 18.3 → 18.
        (lines(("metal", 1000)), 1830, 18, 18),
        # 1 kg e-waste = 4700 g → 47 exactly; 1 kg aluminium = 8110 g → 81.1 → 81; 1 kg cardboard = 3160 g → 31.6 → 32.
        (lines(("ewaste", 1000)), 4700, 47, 47),
        (lines(("aluminium", 1000)), 8110, 81, 81),
        (lines(("cardboard", 1000)), 3160, 32, 32),
    ],
)
def test_points_are_rounded_once_on_the_whole_deposit(api, world, items, co2e_g, points, per_line_rounding):
    body = deposit_ok(api, world, items)
    assert (body["co2e_g"], body["points"]) == (co2e_g, points)
    assert isinstance(body["id"], int)
    assert body["resident_id"] == world["resident"].id
    assert body["collection_point_id"] == world["a"]
    assert body["collector_id"] == world["collector"].id
    assert body["device_id"] is None
    assert body["weight_g"] == sum(i["weight_g"] for i in items)
    assert [(i["category"], i["weight_g"]) for i in body["items"]] == [(i["category"], i["weight_g"]) for i in items]
    assert sum(i["points"] for i in body["items"]) == points
    assert sum(i["co2e_g"] for i in body["items"]) == co2e_g
    assert all(i["rule_id"] for i in body["items"])
    naive = sum(round(i["weight_g"] * f / 1000 * 10 / 1000 + 1e-9) for i, f in _factors(items))
    assert naive == per_line_rounding

    profile = me(api, world["resident"])
    assert (profile["balance"], profile["co2e_g"], profile["lifetime_earned"]) == (points, co2e_g, points)
    entry = api.get("/me/ledger", as_=world["resident"]).get_json()["items"][0]
    assert (entry["delta"], entry["kind"], entry["source"], entry["co2e_g"]) == (points, "earn", "sorting", co2e_g)
    assert (entry["ref_type"], entry["ref_id"]) == ("deposit", str(body["id"]))
    assert entry["id"] == body["entry_id"]
    # the rule: the entry's own for one category, the lines' (through the deposit it names) for several
    rules = {i["rule_id"] for i in body["items"]}
    expected = (f"sorting:{items[0]['category']}", rules.pop()) if len(rules) == 1 else ("sorting", None)
    assert (entry["activity"], entry["rule_id"]) == expected


FACTORS = {
    "paper": 1760,
    "cardboard": 3160,
    "plastic": 1370,
    "metal": 1830,
    "aluminium": 8110,
    "glass": 260,
    "textile": 2000,
    "ewaste": 4700,
}


def _factors(items):
    return [(i, FACTORS[i["category"]]) for i in items]


def test_mixed_deposit_allocates_line_points_by_grams(api, world):
    body = deposit_ok(api, world, lines(("paper", 250), ("glass", 1700), ("plastic", 730)))
    # 19 points over 440 : 442 : 1000.1 → shares 4.44, 4.46, 10.10 → floors 4, 4, 10 and the spare point
    # goes to the largest remainder (glass).
    assert [(i["category"], i["points"], i["co2e_g"]) for i in body["items"]] == [
        ("paper", 4, 440),
        ("glass", 5, 442),
        ("plastic", 10, 1000),
    ]
    rows = db.session.scalars(sa.select(DepositItem).order_by(DepositItem.id)).all()
    assert [(r.category, r.weight_g, r.points) for r in rows] == [
        ("paper", 250, 4),
        ("glass", 1700, 5),
        ("plastic", 730, 10),
    ]


def test_a_rule_with_fixed_points_per_kg_gives_them_and_the_deposit_is_rounded_once(api, clock, world):
    published = api.post(
        "/rules",
        as_=world["admin"],
        json={"activity": "sorting:paper", "points": 20, "source": "测试：纸类按重量固定积分"},
    )
    assert published.status_code == 201, published.get_json()
    clock.advance(seconds=11)
    body = deposit_ok(api, world, lines(("paper", 1250), ("plastic", 730)))
    # paper: 20 points a kg × 1.25 kg = 25 exactly; plastic: 1000.1 g → 10.001; 35.001 in all → 35 points.
    # The grams still follow the factors: 2200 + 1000.1 → 3200 g.
    assert (body["points"], body["co2e_g"]) == (35, 3200)
    assert [(i["category"], i["points"], i["co2e_g"]) for i in body["items"]] == [
        ("paper", 25, 2200),
        ("plastic", 10, 1000),
    ]
    assert me(api, world["resident"])["balance"] == 35


def test_a_deposit_beyond_what_the_columns_hold_is_refused_not_a_500(api, clock, world):
    """The schema lets an admin publish a factor of 10 t a unit (meant for appliances): 3 t of paper at it would
    overflow the 32-bit grams before a cap could refuse them."""
    rule = {"activity": "sorting:paper", "co2e_g_per_unit": 10000000, "source": "测试：上限"}
    published = api.post("/rules", as_=world["admin"], json=rule)
    assert published.status_code == 201, published.get_json()
    clock.advance(seconds=11)
    error = assert_error(deposit(api, world, lines(*[("paper", 150_000)] * 20)), 422, "validation_error")
    assert "items" in error["details"]["fields"]
    assert (count(Deposit), count(LedgerEntry), me(api, world["resident"])["balance"]) == (0, 0, 0)


def test_a_deposit_worth_zero_points_is_recorded_without_an_entry(api, world):
    body = deposit_ok(api, world, lines(("glass", 10)))  # 2.6 g → 3 g, 0.026 points → 0
    assert (body["points"], body["co2e_g"], body["weight_g"]) == (0, 3, 10)
    assert body.get("entry_id") is None
    assert count(Deposit) == 1
    assert count(LedgerEntry) == 0
    assert me(api, world["resident"])["balance"] == 0
    assert api.get("/me/ledger", as_=world["resident"]).get_json()["items"] == []


def test_grams_are_rounded_once_on_the_whole_deposit_too(api, world):
    # 10 g glass = 2.6 g, twice, + 1 kg paper = 1760 g → 1765.2 g → 1765 (rounding each line would give 3 + 3 + 1760
    # = 1766); 17.652 points → 18. The lines share 1765 g as 2.59970… : 2.59970… : 1759.80… → floors 2, 2, 1759 and
    # the two spare grams go to the largest remainders: paper (.80), then the first of the tied glass lines.
    body = deposit_ok(api, world, lines(("glass", 10), ("glass", 10), ("paper", 1000)))
    assert (body["co2e_g"], body["points"]) == (1765, 18)
    assert [(i["co2e_g"], i["points"]) for i in body["items"]] == [(3, 0), (2, 0), (1760, 18)]
    assert me(api, world["resident"])["co2e_g"] == 1765


def test_points_follow_the_configured_rate(api, app, monkeypatch, world):
    """POINTS_PER_KG_CO2E is configurable: at 25 points a kg, 1 kg paper (1760 g) is 44 points, not 18."""
    monkeypatch.setitem(app.config, "POINTS_PER_KG_CO2E", 25)
    body = deposit_ok(api, world, lines(("paper", 1000), ("glass", 10)))  # 1762.6 g x 25 / 1000 = 44.065 → 44
    assert (body["points"], body["co2e_g"]) == (44, 1763)
    assert me(api, world["resident"])["balance"] == 44


def test_deposit_can_be_read_back_in_scope(api, world):
    body = deposit_ok(api, world, lines(("paper", 1000)))
    path = f"/deposits/{body['id']}"
    assert api.get(path, as_=world["resident"]).get_json() == body
    assert api.get(path, as_=world["collector"]).get_json()["id"] == body["id"]
    assert api.get(path, as_=api.staff("worker", community_id=community_id("hengkang"))).status_code == 200
    assert_error(api.get(path, as_=api.resident()), 404, "not_found")
    # staff out of scope hear what a missing id answers: ids are sequential, and another community's are not theirs
    # to count
    other_collector = api.staff("collector", collection_point_ids=[world["b"]])
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    for caller in (other_collector, outsider):
        assert assert_error(api.get(path, as_=caller), 404, "not_found") == assert_error(
            api.get("/deposits/999999", as_=caller), 404, "not_found"
        )
    assert_error(api.get("/deposits/999999", as_=world["admin"]), 404, "not_found")


def test_roles_without_deposits_are_refused_before_any_lookup(api, world):
    """A merchant or an alliance member has no deposits to read: refused alike whether the id exists or not, so the
    answer tells nothing about which ids do."""
    from app.exchange.models import Store
    from app.people.models import Organization

    organization = db.session.scalar(sa.select(Organization.id).limit(1))
    store = Store(name="测试兑换点", organization_id=organization)
    db.session.add(store)
    db.session.commit()
    body = deposit_ok(api, world, lines(("paper", 1000)))
    for caller in (api.staff("merchant", store_ids=[store.id]), api.staff("alliance", organization_id=organization)):
        assert_error(api.get(f"/deposits/{body['id']}", as_=caller), 403, "forbidden")
        assert_error(api.get("/deposits/999999", as_=caller), 403, "forbidden")


# --- a point's deposits ---------------------------------------------------------------------------------------------


def point_deposits(api, caller, point_id: int, query: str = "") -> dict:
    response = api.get(f"/collection-points/{point_id}/deposits{query}", as_=caller)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_points_deposits_are_listed_newest_first_with_their_lines_and_entries(api, world):
    other = api.resident()
    first = deposit_ok(api, world, lines(("paper", 1000)))
    nothing = deposit_ok(api, world, lines(("glass", 10)))  # worth 0 points: no ledger entry
    mixed = deposit_ok(api, world, lines(("plastic", 730), ("metal", 500)), resident=other)
    elsewhere = deposit_ok(api, world, lines(("paper", 1000)), point=world["b"],
                           collector=api.staff("collector", collection_point_ids=[world["b"]]))  # fmt: skip
    page = point_deposits(api, world["collector"], world["a"])
    assert page["next"] is None
    assert [d["id"] for d in page["items"]] == [mixed["id"], nothing["id"], first["id"]]
    # each item is the deposit as POST /deposits and GET /deposits/{id} answer it
    assert page["items"] == [mixed, nothing, first]
    assert [d["entry_id"] is None for d in page["items"]] == [False, True, False]
    assert [line["category"] for line in page["items"][0]["items"]] == ["plastic", "metal"]
    assert point_deposits(api, world["admin"], world["b"])["items"] == [elsewhere]

    one = point_deposits(api, world["admin"], world["a"], "?limit=2")
    assert [d["id"] for d in one["items"]] == [mixed["id"], nothing["id"]]
    rest = point_deposits(api, world["admin"], world["a"], f"?limit=2&cursor={one['next']}")
    assert ([d["id"] for d in rest["items"]], rest["next"]) == ([first["id"]], None)


def test_a_resident_pages_through_their_own_deposits_only(api, world):
    mine = [deposit_ok(api, world, lines(("paper", 1000 + i))) for i in range(3)]
    other = api.resident()
    theirs = deposit_ok(api, world, lines(("glass", 500)), resident=other)
    assert {d["collection_point_name"] for d in [*mine, theirs]} == {"恒康甲站"}  # where, for the list
    first = api.get("/me/deposits?limit=2", as_=world["resident"]).get_json()
    assert first["items"] == [mine[2], mine[1]]
    rest = api.get(f"/me/deposits?limit=2&cursor={first['next']}", as_=world["resident"]).get_json()
    assert (rest["items"], rest["next"]) == ([mine[0]], None)
    assert api.get("/me/deposits", as_=other).get_json()["items"] == [theirs]
    assert api.get("/me/deposits", as_=api.resident()).get_json() == {"items": [], "next": None}
    assert_error(api.get("/me/deposits", as_=world["collector"]), 403, "forbidden")
    assert_error(api.get("/me/deposits"), 401, "unauthorized")
    assert_error(api.get("/me/deposits?cursor=%%%", as_=world["resident"]), 422, "validation_error")


def test_a_resident_reads_one_local_days_deposits(api, clock, world):
    """As for check-ins: the mini-program's "today" shows what was weighed today, by the local day."""
    before_midnight = deposit_ok(api, world, lines(("paper", 1000)))
    clock.set(datetime(2026, 6, 16, 0, 0, 1, tzinfo=SHANGHAI))  # 16:00:01 UTC on the 15th
    after_midnight = deposit_ok(api, world, lines(("paper", 2000)), code=api.member_code(world["resident"]))
    day = lambda d: api.get(f"/me/deposits?day={d}", as_=world["resident"]).get_json()["items"]  # noqa: E731
    assert day("2026-06-15") == [before_midnight]
    assert day("2026-06-16") == [after_midnight]
    assert day("2026-06-17") == []
    assert_error(api.get("/me/deposits?day=tomorrow", as_=world["resident"]), 422, "validation_error")


def test_a_points_deposits_of_one_local_day(api, clock, world):
    clock.set(datetime(2026, 6, 15, 23, 59, 59, tzinfo=SHANGHAI))
    late = deposit_ok(api, world, lines(("paper", 1000)))
    clock.advance(seconds=1)  # midnight in Shanghai, 16:00 UTC
    early = deposit_ok(api, world, lines(("paper", 1000)))
    ids = lambda day: [d["id"] for d in point_deposits(api, world["collector"], world["a"], f"?day={day}")["items"]]  # noqa: E731
    assert ids("2026-06-15") == [late["id"]]
    assert ids("2026-06-16") == [early["id"]]
    assert ids("2026-06-17") == []
    assert [d["id"] for d in point_deposits(api, world["collector"], world["a"])["items"]] == [early["id"], late["id"]]


def test_a_points_deposits_are_read_only_in_scope(api, world):
    path = f"/collection-points/{world['a']}/deposits"
    deposit_ok(api, world, lines(("paper", 1000)))
    other_collector = api.staff("collector", collection_point_ids=[world["b"]])
    outsider = api.staff("worker", community_id=community_id("xinhaiwan"))
    for caller in (other_collector, outsider, world["resident"]):
        assert_error(api.get(path, as_=caller), 403, "forbidden")
    assert_error(api.get(path), 401, "unauthorized")
    worker = api.staff("worker", community_id=community_id("hengkang"))
    assert len(point_deposits(api, worker, world["a"])["items"]) == 1
    assert_error(api.get("/collection-points/999999/deposits", as_=world["admin"]), 404, "not_found")
    bad = ("?day=2026-13-01", "?day=yesterday", "?day=0001-01-01", "?day=9999-12-31", "?cursor=%%%", "?limit=0",
           "?limit=101")  # fmt: skip
    for query in bad:
        assert_error(api.get(path + query, as_=world["admin"]), 422, "validation_error")


# --- who may record ------------------------------------------------------------------------------------------------


def test_only_a_collector_of_the_point_records(api, world):
    other_collector = api.staff("collector", collection_point_ids=[world["b"]])
    assert_error(deposit(api, world, lines(("paper", 1000)), collector=other_collector), 403, "forbidden")
    worker = api.staff("worker", community_id=community_id("hengkang"))
    for caller in (worker, world["admin"], api.resident()):
        assert_error(deposit(api, world, lines(("paper", 1000)), collector=caller), 403, "forbidden")
    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": world["a"]}
    assert_error(api.post("/deposits", json={**body, "items": lines(("paper", 1000))}), 401, "unauthorized")
    assert count(Deposit) == 0
    assert me(api, world["resident"])["balance"] == 0
    # the collector of point b records at point b
    assert deposit_ok(api, world, lines(("paper", 1000)), point=world["b"], collector=other_collector)["points"] == 18


def test_unknown_or_retired_point_is_a_validation_error(api, world):
    error = assert_error(deposit(api, world, lines(("paper", 1000)), point=999999), 422, "validation_error")
    assert "collection_point_id" in error["details"]["fields"]
    assert api.delete(f"/collection-points/{world['a']}", as_=world["admin"]).status_code == 204
    error = assert_error(deposit(api, world, lines(("paper", 1000))), 422, "validation_error")
    assert "collection_point_id" in error["details"]["fields"]
    assert count(Deposit) == 0


# --- bounds --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "items",
    [
        pytest.param(lines(("paper", 0)), id="zero"),
        pytest.param(lines(("paper", -5)), id="negative"),
        pytest.param(lines(("paper", 200_001)), id="over-200kg"),
        pytest.param(lines(("paper", 1.5)), id="fraction"),
        pytest.param(lines(("paper", 1000.0)), id="whole-float"),  # integers in grams on the wire (FACTORS.md)
        pytest.param(lines(("paper", "12")), id="string"),
        pytest.param(lines(("paper", True)), id="bool"),
        pytest.param(lines(("paper", None)), id="null"),
        pytest.param([{"category": "paper"}], id="no-weight"),
        pytest.param([{"category": "paper", "weight_g": 100, "kg": 0.1}], id="unknown-field"),
        pytest.param(lines(*[("paper", 10)] * 21), id="21-lines"),
        pytest.param([], id="no-lines"),
        pytest.param(lines(("plutonium", 100)), id="unknown-category"),
        pytest.param(lines(("sorting:paper", 100)), id="activity-not-category"),
    ],
)
def test_bad_lines_are_validation_errors(api, world, items):
    error = assert_error(deposit(api, world, items), 422, "validation_error")
    assert "items" in error["details"]["fields"], error
    assert count(Deposit) == 0
    assert me(api, world["resident"])["balance"] == 0


@pytest.mark.parametrize("missing", ["member_code", "collection_point_id", "items"])
def test_missing_top_level_fields(api, world, missing):
    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": world["a"]}
    body["items"] = lines(("paper", 100))
    del body[missing]
    error = assert_error(api.post("/deposits", as_=world["collector"], json=body), 422, "validation_error")
    assert missing in error["details"]["fields"]


def test_bounds_themselves_are_accepted(api, world):
    assert deposit_ok(api, world, lines(*[("paper", 10)] * 20))["points"] == 4  # 20 × 17.6 g = 352 g → 3.52
    assert deposit_ok(api, world, lines(("glass", 1)))["weight_g"] == 1
    # a full 200 kg line is within the bounds; it is refused only by the daily cap
    error = assert_error(deposit(api, world, lines(("glass", 200_000))), 409, "cap_reached")
    assert error["details"]["cap"] == 200


def test_an_unknown_category_is_refused_with_the_names_a_collector_knows(api, world):
    error = assert_error(deposit(api, world, lines(("wood", 500))), 422, "validation_error")
    [message] = error["details"]["fields"]["items"]["0"]["category"]
    assert message.startswith("必须是以下之一：paper（废纸）、cardboard（纸板）、plastic（塑料）")
    assert message.endswith("ewaste（电子废弃物）")
    assert count(Deposit) == 0


def test_a_weight_that_is_not_a_whole_number_of_grams_says_the_unit(api, world):
    for weight in (1.5, "1500", True):
        error = assert_error(deposit(api, world, lines(("paper", weight))), 422, "validation_error")
        assert error["details"]["fields"]["items"]["0"]["weight_g"] == ["重量以克为单位，须为整数（1.5 千克填 1500）"]
    assert count(Deposit) == 0


def test_category_the_point_does_not_take(api, world):
    glass_collector = api.staff("collector", collection_point_ids=[world["glass_only"]])
    kw = {"point": world["glass_only"], "collector": glass_collector}
    error = assert_error(deposit(api, world, lines(("glass", 500), ("paper", 500)), **kw), 422, "validation_error")
    assert error["message"] == "该回收点不收：废纸"  # the rule's zh-CN name, not the code
    # keyed by line, as the body's own errors are: the app marks the line to take off
    assert error["details"]["fields"] == {"items": {"1": {"category": ["该回收点不收废纸"]}}}
    assert count(Deposit) == 0
    assert deposit_ok(api, world, lines(("glass", 5000)), **kw)["points"] == 13  # 1300 g


# --- caps ----------------------------------------------------------------------------------------------------------


def test_per_category_daily_cap_refuses_and_writes_nothing(api, clock, world):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176  # 17 600 g
    error = assert_error(deposit(api, world, lines(("paper", 2000))), 409, "cap_reached")  # +35 → 211 > 200
    assert "200" in error["message"]
    assert (error["details"]["cap"], error["details"]["used"]) == (200, 176)
    assert error["details"]["activity"] == "sorting:paper"
    assert me(api, world["resident"])["balance"] == 176
    assert count(Deposit) == 1
    assert count(DepositItem) == 1
    assert count(LedgerEntry) == 1
    # other categories are counted apart
    assert deposit_ok(api, world, lines(("plastic", 1000)))["points"] == 14  # 1370 g
    # what still fits under the cap is accepted: +24 → exactly 200
    assert deposit_ok(api, world, lines(("paper", 1364)))["points"] == 24  # 2400.64 g → 24.0064
    assert_error(deposit(api, world, lines(("paper", 30))), 409, "cap_reached")  # 52.8 g → 1 point
    # a new local day starts a new count
    clock.set(datetime(2026, 6, 16, 0, 0, 1, tzinfo=SHANGHAI))
    assert deposit_ok(api, world, lines(("paper", 2000)), code=api.member_code(world["resident"]))["points"] == 35


def test_a_refused_deposit_is_logged_with_the_collector_the_point_and_the_member_codes_resident(
    api, clock, world, caplog
):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    caplog.clear()
    response = deposit(api, world, lines(("paper", 2000)))
    assert_error(response, 409, "cap_reached")
    [line] = [r for r in caplog.records if r.getMessage().startswith("refused ")]
    collector, point, resident = world["collector"].id, world["a"], world["resident"].id
    assert line.getMessage() == (
        f"refused POST /api/v1/deposits 409 cap_reached by=staff:{collector} point={point} resident={resident} "
        "activity=sorting:paper cap=200 used=176 remaining=24 points=35"
    )
    code = api.member_code(world["resident"])
    clock.advance(seconds=121)
    caplog.clear()
    assert_error(deposit(api, world, lines(("paper", 100)), code=code), 410, "qr_expired")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    expired = f"refused POST /api/v1/deposits 410 qr_expired by=staff:{collector} point={point} resident={resident}"
    assert line == expired


def test_a_deposit_over_several_caps_names_each_of_them(api, world):
    """The collector learns every category to take off at once, not one refusal per try."""
    error = assert_error(deposit(api, world, lines(("cardboard", 100_000), ("metal", 100_000))), 409, "cap_reached")
    assert "纸板今天还可得 200 积分（每天上限 200），本次 3160 积分超出；" in error["message"]
    assert "金属今天还可得 200 积分（每天上限 200），本次 1830 积分超出；" in error["message"]
    assert error["details"]["activity"] == "sorting:cardboard"  # the first, described as before
    assert error["details"]["refused"] == ["sorting:cardboard", "sorting:metal", "daily:total"]
    assert count(Deposit) == 0


@pg_concurrency
def test_a_late_retry_waits_for_the_first_try_still_in_flight(app, api, clock, world):
    """The first try is still writing when its code expires and the collector retries: the retry waits for it and
    hears that it went through, not 410 (which would have the load recorded again)."""
    from app import qr
    from app.ledger.models import Account

    code = api.member_code(world["resident"])
    key = qr.derive_key(app.config["QR_SECRET"], "member")
    nonce = qr.read_member_code(qr.extract_token(code), key, clock.now).nonce
    first_try = [  # as a deposit worth points writes: the account locked, then the deposit that spends the code
        sa.update(Account).where(Account.resident_id == world["resident"].id).values(balance=Account.balance + 18),
        sa.insert(Deposit).values(resident_id=world["resident"].id, member_code_nonce=nonce,
                                  collection_point_id=world["a"], collector_id=world["collector"].id, points=18,
                                  co2e_g=1760, weight_g=1000, created_at=clock.now),
    ]  # fmt: skip
    clock.advance(seconds=300)
    late = during_an_uncommitted(app, first_try, lambda: deposit(api, world, lines(("paper", 1000)), code=code))
    assert assert_error(late, 409, "duplicate")["details"]["points"] == 18
    assert count(Deposit) == 1


def test_a_line_over_its_cap_alone_and_one_over_what_is_left_today_are_both_named(api, world):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    # cardboard alone is over its cap; 2 kg of paper (35 points) is over only with today's 176
    error_code = api.member_code(world["resident"])
    over = lines(("cardboard", 100_000), ("paper", 2000))
    error = assert_error(deposit(api, world, over, code=error_code), 409, "cap_reached")
    assert error["details"]["refused"] == ["sorting:cardboard", "sorting:paper", "daily:total"]
    assert "废纸今天还可得 24 积分（每天上限 200），本次 35 积分超出" in error["message"]
    # each refused counter with its own figures, so the collector sees how much room each has left
    assert error["details"]["counters"] == [
        {"activity": "sorting:cardboard", "cap": 200, "used": 0, "remaining": 200, "points": 3160},  # 100 kg × 3160 g
        {"activity": "sorting:paper", "cap": 200, "used": 176, "remaining": 24, "points": 35},  # 2 kg × 1760 g
        {"activity": "daily:total", "cap": 500, "used": 176, "remaining": 324, "points": 3195},
    ]
    # and what to do: the same member code still pays for the rest
    assert error["message"].endswith(
        "。本次未记录，会员码仍可使用：可去掉超出上限的品类后重新提交，或选择按上限记录（超出部分不计积分）"
    )
    assert deposit_ok(api, world, lines(("paper", 1000)), code=error_code)["points"] == 18


def fitted(api, world, items, **kw) -> dict:
    """A deposit sent with fit_to_caps: the collector chose to record the whole load and credit what still fits."""
    code = kw.pop("code", None) or api.member_code(kw.pop("resident", None) or world["resident"])
    body = {"member_code": code, "collection_point_id": world["a"], "items": items, "fit_to_caps": True}
    response = api.post("/deposits", as_=world["collector"], json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_fit_to_caps_records_the_whole_load_and_credits_only_what_the_caps_still_take(api, world):
    """Over 11 kg of paper can never be recorded whole under a 200-point cap; asked to, the deposit is recorded as
    weighed and the points stop at the cap: the excess earns nothing, as FACTORS.md's "earns at most" reads."""
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    answer = fitted(api, world, lines(("paper", 2000)))  # 35 points, 24 left under the cap
    assert (answer["points"], answer["points_over_cap"]) == (24, 11)
    assert (answer["weight_g"], answer["co2e_g"]) == (2000, 3520)  # as weighed
    assert [(i["points"], i["co2e_g"]) for i in answer["items"]] == [(24, 3520)]
    entry = db.session.get(LedgerEntry, answer["entry_id"])
    assert (entry.delta, entry.co2e_g) == (24, 3520)
    assert me(api, world["resident"])["balance"] == 200
    # with nothing left under the cap the load is still recorded, worth nothing today
    nothing = fitted(api, world, lines(("paper", 1000)))
    assert (nothing["points"], nothing["points_over_cap"], nothing["entry_id"]) == (0, 18, None)
    assert nothing["co2e_g"] == 1760
    assert me(api, world["resident"])["balance"] == 200
    assert count(Deposit) == 3
    stored = api.get(f"/deposits/{answer['id']}", as_=world["resident"]).get_json()
    assert (stored["points"], stored["points_over_cap"]) == (24, 11)
    # a deposit that fits is untouched by the flag
    assert fitted(api, world, lines(("plastic", 1000)))["points_over_cap"] == 0
    assert verify_ledger().ok


def test_fit_to_caps_records_a_one_point_load_worth_nothing_when_the_cap_is_full(api, world):
    """The smallest load that earns anything is fitted too: at the cap, one point's worth is recorded as weighed and
    credits nothing, rather than being refused for want of room."""
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    assert deposit_ok(api, world, lines(("paper", 1364)))["points"] == 24  # exactly 200
    answer = fitted(api, world, lines(("paper", 30)))  # 52.8 g → 1 point
    assert (answer["points"], answer["points_over_cap"], answer["entry_id"]) == (0, 1, None)
    assert [i["points"] for i in answer["items"]] == [0]
    assert me(api, world["resident"])["balance"] == 200
    assert count(Deposit) == 3
    assert verify_ledger().ok


def test_fit_to_caps_fills_the_lines_in_order_under_the_daily_total(api, world):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    assert deposit_ok(api, world, lines(("cardboard", 6000)))["points"] == 190
    assert deposit_ok(api, world, lines(("aluminium", 1600)))["points"] == 130  # 496 in all: 4 left today
    answer = fitted(api, world, lines(("plastic", 1000), ("glass", 1000)))  # 13.7 + 2.6 → 16: lines 14 and 2
    assert [i["points"] for i in answer["items"]] == [4, 0]
    assert (answer["points"], answer["points_over_cap"], answer["co2e_g"]) == (4, 12, 1630)
    assert me(api, world["resident"])["balance"] == 500


def test_a_fitted_deposit_reversed_gives_back_the_room_it_took(api, world):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    answer = fitted(api, world, lines(("paper", 2000)))
    reverse(api, world, answer["entry_id"])  # weighed wrong: the 24 points it was credited come off the cap again
    assert deposit_ok(api, world, lines(("paper", 1364)))["points"] == 24
    assert_error(deposit(api, world, lines(("paper", 30))), 409, "cap_reached")
    assert verify_ledger().ok


def test_fit_to_caps_must_be_a_boolean(api, world):
    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": world["a"],
            "items": lines(("paper", 100)), "fit_to_caps": "yes"}  # fmt: skip
    error = assert_error(api.post("/deposits", as_=world["collector"], json=body), 422, "validation_error")
    assert "fit_to_caps" in error["details"]["fields"]
    assert count(Deposit) == 0


@pg_concurrency
def test_parallel_fitted_deposits_never_credit_past_the_cap(api, app, world):
    """Each fitted deposit reads the room left under the account's lock: together they stop at the cap exactly."""
    resident, deposits = world["resident"], 12
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176
    bodies = [  # 18 points each, 24 left under the cap
        {"member_code": api.member_code(resident), "collection_point_id": world["a"], "items": lines(("paper", 1000)),
         "fit_to_caps": True}
        for _ in range(deposits)
    ]  # fmt: skip
    post = lambda client, i: client.post("/api/v1/deposits", json=bodies[i], headers=world["collector"].auth)  # noqa: E731
    responses = race(app, post, deposits)
    assert [r.status_code for r in responses] == [201] * deposits, [r.get_json() for r in responses]
    credited = sorted(r.get_json()["points"] for r in responses)
    assert sum(credited) == 24
    assert credited[-2:] == [6, 18]
    assert sum(r.get_json()["points_over_cap"] for r in responses) == 18 * deposits - 24
    assert me(api, resident)["balance"] == 200
    assert count(Deposit) == deposits + 1
    report = verify_ledger()
    assert report.ok, report.problems


def _wait_for_lock_waiters(conn, waiting: int) -> None:
    """Until `waiting` other sessions wait on a lock (a row's, or a transaction's over a unique key). Inside a
    transaction pg_stat_activity is read once and kept: each look clears that snapshot first."""
    deadline = time.monotonic() + 10
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
    while conn.execute(sa.text("SELECT pg_stat_clear_snapshot()")) and conn.execute(query).scalar() < waiting:
        assert time.monotonic() < deadline, f"fewer than {waiting} requests waiting on a lock"
        time.sleep(0.02)


@pg_concurrency
def test_a_fitted_and_a_plain_deposit_of_one_code_take_their_locks_in_one_order(api, app, world):
    """Sent at once with one member code (a bin and a collector, or an app retrying with the flag): both spend the
    code (its unique index) before they lock the account. Taken in opposite orders, each waited on the other, and
    PostgreSQL broke the deadlock with a 500."""
    code = api.member_code(world["resident"])
    plain = {"member_code": code, "collection_point_id": world["a"], "items": lines(("paper", 1000))}
    bodies = [plain | {"fit_to_caps": True}, plain]
    answers: dict[int, object] = {}
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.NullPool)
    with engine.connect() as in_flight:  # a scan of the same resident's, say, holding the account
        in_flight.execute(sa.select(Account.id).where(Account.resident_id == world["resident"].id).with_for_update())
        threads = []
        for i, body in enumerate(bodies):
            post = lambda i=i, body=body: answers.update(  # noqa: E731
                {i: app.test_client().post("/api/v1/deposits", json=body, headers=world["collector"].auth)}
            )
            threads.append(threading.Thread(target=post))
            threads[-1].start()
            _wait_for_lock_waiters(in_flight, i + 1)
        in_flight.rollback()
    for thread in threads:
        thread.join(timeout=20)
    engine.dispose()
    assert sorted(r.status_code for r in answers.values()) == [201, 409], [r.get_json() for r in answers.values()]
    assert assert_error(answers[1], 409, "duplicate")["details"]["points"] == 18  # the code paid for the first
    assert count(Deposit) == 1
    assert verify_ledger().ok


def test_lines_of_one_category_share_its_cap(api, world):
    # 6 kg + 6 kg paper = 21 120 g → 211 points, over the 200 cap although each line alone is not
    error = assert_error(deposit(api, world, lines(("paper", 6000), ("paper", 6000))), 409, "cap_reached")
    assert error["details"]["activity"] == "sorting:paper"
    assert count(Deposit) == 0
    assert deposit_ok(api, world, lines(("paper", 5000), ("paper", 5000)))["points"] == 176


def test_daily_total_cap_across_categories(api, world):
    assert deposit_ok(api, world, lines(("paper", 10_000)))["points"] == 176  # 17 600 g
    assert deposit_ok(api, world, lines(("cardboard", 6000)))["points"] == 190  # 18 960 g
    assert deposit_ok(api, world, lines(("aluminium", 1600)))["points"] == 130  # 12 976 g → 496 in all
    error = assert_error(deposit(api, world, lines(("plastic", 1000))), 409, "cap_reached")  # +14 → 510
    said = "全部活动合计今天还可得 4 积分（每天上限 500），本次 14 积分超出"
    # no category is over: taking one off is not the advice, weighing less is
    guidance = "本次未记录，会员码仍可使用：可减少重量后重新提交，或选择按上限记录（超出部分不计积分）"
    assert error["message"] == f"{said}。{guidance}"
    total = {"cap": 500, "used": 496, "activity": "daily:total", "points": 14, "remaining": 4}
    assert error["details"] == total | {"refused": ["daily:total"], "counters": [total]}
    assert me(api, world["resident"])["balance"] == 496
    assert count(Deposit) == 3
    assert deposit_ok(api, world, lines(("glass", 1000)))["points"] == 3  # 260 g → 2.6 → 499
    assert me(api, world["resident"])["balance"] == 499


def _counters(resident_id: int) -> dict[str, int]:
    account = db.session.scalar(sa.select(Account.id).filter_by(resident_id=resident_id))
    rows = db.session.execute(sa.select(DailyEarning.activity, DailyEarning.points).filter_by(account_id=account))
    return dict(rows.all())


def reverse(api, world, entry_id: int):
    response = api.post(f"/ledger/entries/{entry_id}/reverse", as_=world["admin"], json={"reason": "称重错误"})
    assert response.status_code == 201, response.get_json()


def _publish(api, world, clock, activity: str, **changes) -> dict:
    response = api.post(
        "/rules", as_=world["admin"], json={"activity": activity, "source": "测试：调整规则", **changes}
    )
    assert response.status_code == 201, response.get_json()
    clock.advance(seconds=11)  # in force once every worker's rule cache can have seen it
    return response.get_json()


def test_an_exempt_category_counts_against_its_own_cap_but_not_the_daily_total(api, clock, world):
    _publish(api, world, clock, "sorting:glass", daily_total_exempt=True)
    deposit_ok(api, world, lines(("paper", 10_000)))  # 176
    deposit_ok(api, world, lines(("cardboard", 6000)))  # 190
    deposit_ok(api, world, lines(("aluminium", 1600)))  # 130 → 496 counted in all
    # 20 kg glass = 5200 g → 52 points: 548 if glass counted, but it is exempt
    assert deposit_ok(api, world, lines(("glass", 20_000)))["points"] == 52
    resident = world["resident"]
    assert _counters(resident.id)["daily:total"] == 496
    assert _counters(resident.id)["sorting:glass"] == 52
    # a mixed deposit: 1 kg glass (2.6) + 1 kg plastic (13.7) = 16.3 → 16 points, split 3 : 13 (shares 2.55 : 13.45);
    # only the plastic's 13 count towards the total, and 509 is over it
    error = assert_error(deposit(api, world, lines(("glass", 1000), ("plastic", 1000))), 409, "cap_reached")
    total = {"cap": 500, "used": 496, "activity": "daily:total", "points": 13, "remaining": 4}
    assert error["details"] == total | {"refused": ["daily:total"], "counters": [total]}
    # the total lowered below what was counted today: a deposit of exempt glass alone charges nothing to the total
    _publish(api, world, clock, "daily:total", daily_cap_points=400)
    assert deposit_ok(api, world, lines(("glass", 1000)))["points"] == 3  # 260 g → 2.6 → 3
    error = assert_error(deposit(api, world, lines(("plastic", 1000))), 409, "cap_reached")
    assert (error["details"]["activity"], error["details"]["cap"], error["details"]["remaining"]) == (
        "daily:total",
        400,
        0,
    )
    assert me(api, resident)["balance"] == 496 + 52 + 3


def test_a_category_without_a_daily_cap_is_counted_but_never_refused(api, clock, world):
    _publish(api, world, clock, "sorting:paper", daily_cap_points=None)
    assert deposit_ok(api, world, lines(("paper", 12_000)))["points"] == 211  # 21 120 g: over the old 200 cap
    # the second one adds to a counter that exists already (the first only created it)
    assert deposit_ok(api, world, lines(("paper", 12_000)))["points"] == 211
    assert _counters(world["resident"].id) == {"sorting:paper": 422, "daily:total": 422}


def test_a_deposit_worth_exactly_the_category_cap_fits(api, world):
    # 11 364 g paper = 20 000.64 g → 200.0064 → 200 points: exactly the cap, in one deposit
    assert deposit_ok(api, world, lines(("paper", 11_364)))["points"] == 200
    error = assert_error(deposit(api, world, lines(("paper", 30))), 409, "cap_reached")  # 52.8 g → 1 more
    assert (error["details"]["used"], error["details"]["remaining"]) == (200, 0)


def test_reversing_a_deposit_gives_the_days_cap_room_back(api, world):
    """A mis-weighed deposit is reversed and weighed again: the cap counts what the resident keeps."""
    wrong = deposit_ok(api, world, lines(("paper", 11_000), ("plastic", 1000)))  # rounded once: 193 + 14
    resident = world["resident"]
    assert _counters(resident.id) == {"sorting:paper": 193, "sorting:plastic": 14, "daily:total": wrong["points"]}
    assert wrong["reversal_entry_id"] is None
    reverse(api, world, wrong["entry_id"])
    assert _counters(resident.id) == {"sorting:paper": 0, "sorting:plastic": 0, "daily:total": 0}
    # every view of the deposit says its points were taken back
    reversal = api.get("/me/ledger", as_=resident).get_json()["items"][0]
    assert reversal["kind"] == "reverse"
    read_back = api.get(f"/deposits/{wrong['id']}", as_=world["collector"]).get_json()
    assert (read_back["entry_id"], read_back["reversal_entry_id"]) == (wrong["entry_id"], reversal["id"])
    mine = api.get("/me/deposits", as_=resident).get_json()["items"]
    assert [d["reversal_entry_id"] for d in mine] == [reversal["id"]]
    again = deposit_ok(api, world, lines(("paper", 11_000)))
    assert again["points"] == 194
    listed = api.get(f"/collection-points/{world['a']}/deposits", as_=world["collector"]).get_json()["items"]
    assert [d["reversal_entry_id"] is None for d in listed] == [True, False]  # newest first
    assert me(api, resident)["balance"] == 194
    assert _counters(resident.id)["sorting:paper"] == 194
    assert_error(deposit(api, world, lines(("paper", 1000))), 409, "cap_reached")  # the cap still holds


def test_reversing_a_deposit_made_before_8am_gives_back_that_local_days_room(api, clock, world):
    """07:30 in Shanghai is 23:30 UTC the day before: the room given back is the local day the deposit counted on."""
    clock.set(datetime(2026, 6, 16, 7, 30, tzinfo=SHANGHAI))
    wrong = deposit_ok(api, world, lines(("paper", 11_000)))  # 19 360 g → 194
    reverse(api, world, wrong["entry_id"])
    assert _counters(world["resident"].id) == {"sorting:paper": 0, "daily:total": 0}
    assert deposit_ok(api, world, lines(("paper", 11_000)))["points"] == 194


def test_reversing_yesterdays_deposit_leaves_todays_count(api, clock, world):
    yesterday = deposit_ok(api, world, lines(("paper", 11_000)))
    clock.advance(days=1)
    deposit_ok(api, world, lines(("paper", 11_000)))
    reverse(api, world, yesterday["entry_id"])
    assert_error(deposit(api, world, lines(("paper", 1000))), 409, "cap_reached")  # today's 194 still count


def test_daily_caps_are_per_resident(api, world):
    assert deposit_ok(api, world, lines(("paper", 11_000)))["points"] == 194  # 19 360 g
    neighbour = api.resident()
    assert deposit_ok(api, world, lines(("paper", 11_000)), resident=neighbour)["points"] == 194


# --- rule versions and moments ---------------------------------------------------------------------------------------


def test_a_deposit_at_the_very_start_of_a_version_uses_it(api, clock, world):
    start = clock.now + timedelta(hours=1)
    v2 = _publish(api, world, clock, "sorting:paper", co2e_g_per_unit="2000", effective_from=start.isoformat())["id"]
    clock.set(start - timedelta(microseconds=1))
    before = deposit_ok(api, world, lines(("paper", 1000)))  # 1760 g → 17.6 → 18
    assert (before["points"], before["co2e_g"]) == (18, 1760)
    assert before["items"][0]["rule_id"] != v2
    clock.set(start)  # valid_from is inclusive
    at = deposit_ok(api, world, lines(("paper", 1000)))  # 2000 g → 20
    assert (at["points"], at["co2e_g"], at["items"][0]["rule_id"]) == (20, 2000, v2)


def test_a_deposit_uses_the_rule_in_force_at_its_own_moment(api, clock, world):
    """A deposit read a few milliseconds before a new version starts is computed, and named, by the version in force
    at its own moment (its created_at), even if the clock has passed the start by the time it is written."""
    start = clock.now + timedelta(hours=1)
    v2 = _publish(api, world, clock, "sorting:paper", co2e_g_per_unit="2000", effective_from=start.isoformat())["id"]
    v1 = db.session.scalar(sa.select(Rule.id).filter_by(activity="sorting:paper", version=1))
    residents = [api.resident() for _ in range(20)]
    seen = set()
    for offset_ms, resident in enumerate(residents, start=1):
        app_clock.set_clock(Ticking(start - timedelta(milliseconds=offset_ms)))
        answer = deposit_ok(api, world, lines(("paper", 1000)), resident=resident)
        expected = (v2, 20) if datetime.fromisoformat(answer["created_at"]) >= start else (v1, 18)
        assert (answer["items"][0]["rule_id"], answer["points"]) == expected, offset_ms
        entry = db.session.get(LedgerEntry, answer["entry_id"])
        assert (entry.rule_id, entry.delta) == expected
        seen.add(expected)
    app_clock.set_clock(clock)
    assert seen == {(v1, 18), (v2, 20)}  # the deposits straddled the start


def test_a_deposit_its_entry_and_its_cap_count_share_one_moment_across_local_midnight(api, clock, world):
    """A deposit that begins a few reads of the clock before local midnight counts on the day it is dated, as its
    entry is; reading the clock again for the posting would count it (and date the entry) on the next day."""
    midnight = datetime(2026, 6, 16, tzinfo=SHANGHAI)
    residents = [api.resident() for _ in range(20)]
    days = set()
    for offset_ms, resident in enumerate(residents, start=1):
        app_clock.set_clock(Ticking(midnight - timedelta(milliseconds=offset_ms)))
        answer = deposit_ok(api, world, lines(("paper", 1000)), resident=resident)
        day = local_day(datetime.fromisoformat(answer["created_at"]), "Asia/Shanghai")
        entry = db.session.get(LedgerEntry, answer["entry_id"])
        counted = db.session.scalars(sa.select(DailyEarning.day).filter_by(account_id=entry.account_id)).all()
        assert local_day(entry.created_at, "Asia/Shanghai") == day, offset_ms
        assert set(counted) == {day}, offset_ms
        days.add(day)
    app_clock.set_clock(clock)
    assert days == {midnight.date() - timedelta(days=1), midnight.date()}  # the deposits straddled midnight


# --- idempotency ---------------------------------------------------------------------------------------------------


def test_a_replayed_refusal_names_the_request_that_was_refused(api, world, caplog):
    """The first body, whole: its request_id is the first request's, whose log line says why; the replay logs none."""
    headers = {"Idempotency-Key": "dep-refused"}
    first = deposit(api, world, lines(("paper", 1000)), code="not a member code", headers=headers)
    assert_error(first, 422, "invalid_qr")
    caplog.clear()
    again = deposit(api, world, lines(("paper", 1000)), code="not a member code", headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.get_json()["error"]["request_id"] == first.headers["X-Request-Id"] != again.headers["X-Request-Id"]
    assert not [r for r in caplog.records if r.getMessage().startswith("refused ")]


def test_idempotent_deposit_replays_and_credits_once(api, clock, world):
    code = api.member_code(world["resident"])
    items = lines(("paper", 1250), ("plastic", 730), ("glass", 400))
    headers = {"Idempotency-Key": "dep-1"}
    first = deposit(api, world, items, code=code, headers=headers)
    assert first.status_code == 201, first.get_json()
    # a retry after the member code has expired still gets the first answer
    clock.advance(seconds=300)
    second = deposit(api, world, items, code=code, headers=headers)
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert me(api, world["resident"])["balance"] == 33
    assert count(Deposit) == 1
    assert count(LedgerEntry) == 1

    changed = lines(("paper", 1250), ("plastic", 731), ("glass", 400))
    assert_error(deposit(api, world, changed, code=code, headers=headers), 409, "idempotency_conflict")
    assert me(api, world["resident"])["balance"] == 33
    assert count(Deposit) == 1


# --- a member code pays for one deposit ------------------------------------------------------------------------------


def test_a_member_code_pays_for_one_deposit(api, world):
    code = api.member_code(world["resident"])
    first = deposit_ok(api, world, lines(("paper", 1000)), code=code)
    # a double tap without an Idempotency-Key, and the same code at another point by another collector
    other = {"point": world["b"], "collector": api.staff("collector", collection_point_ids=[world["b"]])}
    # at the same point, most likely a retry whose answer was lost: the answer says which deposit the code paid for
    retry = assert_error(deposit(api, world, lines(("paper", 1000)), code=code), 409, "duplicate")
    assert retry["details"] == {"deposit_id": first["id"], "points": first["points"]}
    assert f"（编号 {first['id']}，{first['points']} 积分）" in retry["message"]
    # elsewhere, nothing about a deposit at another point
    elsewhere = assert_error(deposit(api, world, lines(("glass", 500)), code=code, **other), 409, "duplicate")
    assert elsewhere["message"] == "该会员码已使用，请让居民刷新会员码后重试"
    assert "details" not in elsewhere or not elsewhere["details"]
    assert (count(Deposit), count(DepositItem), count(LedgerEntry)) == (1, 1, 1)
    assert me(api, world["resident"])["balance"] == first["points"]
    # the resident's next code is a new deposit
    assert deposit_ok(api, world, lines(("paper", 1000)))["points"] == first["points"]


def test_a_refused_deposit_leaves_its_member_code_unspent(api, world):
    code = api.member_code(world["resident"])
    assert_error(deposit(api, world, lines(("glass", 200_000)), code=code), 409, "cap_reached")
    assert_error(deposit(api, world, lines(("glass", 500)), code=code, point=world["glass_only"]), 403, "forbidden")
    assert count(Deposit) == 0
    assert deposit_ok(api, world, lines(("glass", 500)), code=code)["co2e_g"] == 130


def test_a_deposit_worth_nothing_spends_its_code_too(api, world):
    code = api.member_code(world["resident"])
    assert deposit_ok(api, world, lines(("glass", 10)), code=code)["points"] == 0
    assert_error(deposit(api, world, lines(("glass", 10)), code=code), 409, "duplicate")
    assert count(Deposit) == 1


@pg_concurrency
def test_parallel_deposits_with_one_member_code_credit_once(api, app, world):
    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": world["a"],
            "items": lines(("paper", 1000))}  # fmt: skip
    responses = race(
        app, lambda client, i: client.post("/api/v1/deposits", json=body, headers=world["collector"].auth), 10
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 9, [r.get_json() for r in responses]
    assert {r.get_json()["error"]["code"] for r in responses if r.status_code == 409} == {"duplicate"}
    assert (count(Deposit), count(DepositItem), count(LedgerEntry)) == (1, 1, 1)
    assert me(api, world["resident"])["balance"] == 18


def test_a_point_id_beyond_the_database_is_a_validation_error(api, world):
    error = assert_error(deposit(api, world, lines(("paper", 1000)), point=2**40), 422, "validation_error")
    assert "collection_point_id" in error["details"]["fields"]


def test_a_category_added_by_another_worker_is_accepted_at_once(api, world):
    from app.sorting.models import CollectionPoint

    point = db.session.get(CollectionPoint, world["a"])
    db.session.execute(sa.update(CollectionPoint).where(CollectionPoint.id == point.id).values(categories=["paper"]))
    db.session.commit()
    clear_point_cache()
    deposit_ok(api, world, lines(("paper", 1000)))  # this worker now holds ["paper"]
    db.session.execute(
        sa.update(CollectionPoint).where(CollectionPoint.id == point.id).values(categories=["paper", "glass"])
    )
    db.session.commit()
    deposit_ok(api, world, lines(("glass", 1000)))


@pg_concurrency
def test_a_freeze_committed_during_a_deposit_is_seen(api, app, world):
    """The deposit reads the account's state under FOR SHARE: it waits for an uncommitted freeze, then sees it."""
    code = api.member_code(world["resident"])
    send = lambda: deposit(api, world, lines(("paper", 1000)), code=code)  # noqa: E731
    assert_error(during_an_uncommitted_freeze(app, world["resident"].id, send), 403, "account_frozen")
    assert (count(Deposit), count(DepositItem)) == (0, 0)


@pg_concurrency
def test_parallel_deposits_and_an_adjustment_on_one_account_each_post_once(api, app, world):
    """Ten deposits (each written in the same statement as the account lock) race an adjustment on one account:
    every deposit gets exactly its own entry, the chain stays whole and the balance adds up."""
    resident, deposits = world["resident"], 10
    bodies = [  # 4 points each; a member code pays for one deposit
        {"member_code": api.member_code(resident), "collection_point_id": world["a"], "items": lines(("paper", 250))}
        for _ in range(deposits)
    ]
    adjustment = {"delta": 7, "reason": "并发补发"}

    def request(client, index):
        if index == deposits:
            return client.post(f"/api/v1/residents/{resident.id}/adjustments", json=adjustment,
                               headers=world["admin"].auth)  # fmt: skip
        return client.post("/api/v1/deposits", json=bodies[index], headers=world["collector"].auth)

    responses = race(app, request, deposits + 1)
    assert [r.status_code for r in responses] == [201] * (deposits + 1), [r.get_json() for r in responses]
    db.session.expire_all()
    entries = db.session.execute(
        sa.select(LedgerEntry.ref_id, LedgerEntry.delta).where(LedgerEntry.ref_type == "deposit")
    ).all()
    deposit_ids = {str(r.get_json()["id"]) for r in responses[:deposits]}
    assert sorted(ref for ref, _ in entries) == sorted(deposit_ids)
    assert {r.get_json()["entry_id"] for r in responses[:deposits]} == set(
        db.session.scalars(sa.select(LedgerEntry.id).where(LedgerEntry.ref_type == "deposit"))
    )
    assert (count(Deposit), count(DepositItem)) == (deposits, deposits)
    assert me(api, resident)["balance"] == 4 * deposits + 7
    report = verify_ledger()
    assert report.ok, report.problems


@pg_concurrency
def test_parallel_deposits_across_midnight_are_dated_in_chain_order_each_on_its_own_day(api, app, clock, world):
    """Thirty deposits for one resident read a clock that passes local midnight while they queue for the account:
    each entry is dated after the one it follows, on the day its deposit was counted; one dated before midnight
    that finds the account already past it is refused whole (503, to retry), never dated back."""
    midnight = datetime(2026, 6, 16, tzinfo=SHANGHAI)
    resident, deposits = world["resident"], 30
    clock.set(midnight - timedelta(seconds=30))
    bodies = [  # 2 points each, well under the caps on either day
        {"member_code": api.member_code(resident), "collection_point_id": world["a"], "items": lines(("paper", 100))}
        for _ in range(deposits)
    ]
    app_clock.set_clock(Ticking(midnight - timedelta(milliseconds=15)))
    post = lambda client, i: client.post("/api/v1/deposits", json=bodies[i], headers=world["collector"].auth)  # noqa: E731
    responses = race(app, post, deposits)
    assert {r.status_code for r in responses} <= {201, 503}, [r.get_json() for r in responses]
    refused = [r for r in responses if r.status_code == 503]
    assert all(assert_error(r, 503, "service_unavailable") and r.headers["Retry-After"] == "1" for r in refused)
    db.session.expire_all()
    entries = db.session.execute(
        sa.select(LedgerEntry.created_at, Deposit.created_at)
        .join(Deposit, sa.cast(Deposit.id, sa.String) == LedgerEntry.ref_id)
        .order_by(LedgerEntry.seq)
    ).all()
    assert len(entries) == count(Deposit) == deposits - len(refused)
    assert [at for at, _ in entries] == sorted(at for at, _ in entries)
    assert all(local_day(at, "Asia/Shanghai") == local_day(counted, "Asia/Shanghai") for at, counted in entries)
    report = verify_ledger()
    assert report.ok, report.problems


@pytest.mark.parametrize("point_id", [1.5, "1.5", 1e400, True, None])
def test_a_point_id_that_is_not_a_whole_number_is_refused_not_truncated(api, world, point_id):
    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": point_id,
            "items": lines(("paper", 1000))}  # fmt: skip
    response = api.post("/deposits", as_=world["collector"], json=body)
    assert "collection_point_id" in assert_error(response, 422, "validation_error")["details"]["fields"]
    assert count(Deposit) == 0


def test_a_point_retired_by_another_worker_refuses_deposits_at_once(api, world):
    """This worker's copy of the point still says active; the deposit's own statement checks the point as it is."""
    from app.sorting.models import CollectionPoint

    deposit_ok(api, world, lines(("paper", 1000)))  # this worker now holds the point's row
    db.session.execute(sa.update(CollectionPoint).where(CollectionPoint.id == world["a"]).values(active=False))
    db.session.commit()
    late = api.resident()
    for items in (lines(("paper", 1000)), lines(("glass", 10))):  # worth points, and worth none (no ledger entry)
        error = assert_error(deposit(api, world, items, resident=late), 422, "validation_error")
        assert error["details"]["fields"] == {"collection_point_id": ["该回收点已停用，不能记录投递：请联系社区工作者"]}
    assert api.get("/me", as_=late).get_json()["balance"] == 0
    assert count(Deposit) == 1


# --- who is refused before the request is read ----------------------------------------------------------------------


def test_only_residents_get_a_member_code_in_either_form(api, world):
    """A member code pays for deposits as its resident: a staff token names a staff id, never a resident's, so no
    staff member gets a code, as JSON or as the QR image."""
    worker = api.staff("worker", community_id=community_id("hengkang"))
    for caller in (world["collector"], worker, world["admin"]):
        for path in ("/me/member-code", "/me/member-code.png"):
            response = api.get(path, as_=caller)
            assert_error(response, 403, "forbidden")
            assert response.mimetype == "application/json"
    assert_error(api.get("/me/member-code.png"), 401, "unauthorized")


def test_callers_without_the_role_are_refused_before_their_request_is_read(api, world):
    """The role is checked first: a caller who may not record or list deposits gets 403 whatever it sent, not a
    validation error that answers about a request it could never make."""
    worker = api.staff("worker", community_id=community_id("hengkang"))
    for caller in (worker, world["admin"], world["resident"]):
        assert_error(api.post("/deposits", as_=caller, json={}), 403, "forbidden")
        assert_error(api.post("/deposits", as_=caller, json={"items": "junk"}), 403, "forbidden")
    for caller in (world["resident"], api.resident()):
        assert_error(api.get(f"/collection-points/{world['a']}/deposits?day=yesterday", as_=caller), 403, "forbidden")
    assert count(Deposit) == 0


def test_the_deposit_service_refuses_a_non_collector_whoever_calls_it(api, world):
    """The API lets only collectors in; the service checks the role again for any other caller (a worker of the
    point's community, an admin), before it reads the point or the code."""
    from app.auth.guards import Actor
    from app.errors import Forbidden
    from app.sorting import service as sorting

    body = {"member_code": api.member_code(world["resident"]), "collection_point_id": world["a"],
            "items": lines(("paper", 1000))}  # fmt: skip
    for role in ("worker", "admin"):
        actor = Actor(kind="staff", id=world["admin"].id, role=role, community_id=community_id("hengkang"),
                      collection_point_ids=frozenset({world["a"]}))  # fmt: skip
        with pytest.raises(Forbidden):
            sorting.record_deposit(actor, body)
    db.session.rollback()
    assert count(Deposit) == 0
    assert count(LedgerEntry) == 0


def test_a_deposit_refused_for_an_account_that_is_active_by_now_says_to_send_it_again(api):
    """A deposit reads the account frozen; a thaw commits before the refusal is explained. Telling the collector the
    account does not exist would be wrong: it was thawed, and the deposit may be sent again."""
    from app.errors import AccountFrozen, InvalidQr, InvalidState
    from app.sorting.service import _holder_refusal

    me = api.resident()
    assert isinstance(_holder_refusal(me.id), InvalidState)  # active now
    db.session.execute(sa.update(Resident).where(Resident.id == me.id).values(status="frozen"))
    assert isinstance(_holder_refusal(me.id), AccountFrozen)
    db.session.rollback()
    assert isinstance(_holder_refusal(987654), InvalidQr)  # no such account


# --- corrections ---------------------------------------------------------------------------------------------------


def correct(api, world, deposit_id, items, reason="回收员误录重量", headers=None, as_=None):
    body = {"items": items, "reason": reason}
    return api.post(f"/deposits/{deposit_id}/correction", as_=as_ or world["admin"], json=body, headers=headers)


def test_a_mistyped_weight_is_corrected_whole_points_co2e_and_lifetime(api, world):
    """12 500 g typed for 1 250 g: the credit is taken back and the right load recorded in its place, so that /me
    counts the CO₂e and lifetime points of what was weighed, which an adjustment would not."""
    wrong = deposit_ok(api, world, lines(("plastic", 12_500)))
    assert wrong["points"] == 171
    answer = correct(api, world, wrong["id"], lines(("plastic", 1250)))
    assert answer.status_code == 201, answer.get_json()
    right = answer.get_json()
    assert (right["points"], right["co2e_g"], right["weight_g"]) == (17, 1713, 1250)  # 1712.5 g, rounded once
    assert right["corrects_id"] == wrong["id"]
    assert right["collector_id"] == world["collector"].id  # who weighed; the ledger names the admin
    assert right["collection_point_id"] == world["a"]
    profile = me(api, world["resident"])
    assert (profile["balance"], profile["co2e_g"], profile["lifetime_earned"]) == (17, 1713, 17)
    before = api.get(f"/deposits/{wrong['id']}", as_=world["admin"]).get_json()
    assert before["corrected_by_id"] == right["id"]
    assert before["reversal_entry_id"] is not None
    mine = api.get("/me/deposits", as_=world["resident"]).get_json()["items"]
    assert [(d["id"], d["corrects_id"], d["corrected_by_id"]) for d in mine] == [
        (right["id"], wrong["id"], None), (wrong["id"], None, right["id"]),
    ]  # fmt: skip
    entries = api.get("/me/ledger", as_=world["resident"]).get_json()["items"]
    # the right load credited first, then the wrong one taken back: only a net below zero could be refused
    assert [(e["kind"], e["delta"]) for e in entries] == [("reverse", -171), ("earn", 17), ("earn", 171)]
    assert entries[0]["memo"] == "更正投递：回收员误录重量"
    assert entries[1]["memo"].endswith(f"回收投递（更正第 {wrong['id']} 笔）")
    event = db.session.scalar(sa.select(AuditEvent).filter_by(action="deposit.correct"))
    assert event.details == {"reason": "回收员误录重量", "correction_id": right["id"]}
    assert verify_ledger().ok


def test_a_deposit_is_corrected_once_and_the_correction_can_be_corrected(api, world):
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    first = correct(api, world, wrong["id"], lines(("paper", 1000))).get_json()
    error = assert_error(correct(api, world, wrong["id"], lines(("paper", 2000))), 409, "invalid_state")
    assert error["details"] == {"deposit_id": first["id"]}
    assert count(DepositCorrection) == 1
    again = correct(api, world, first["id"], lines(("paper", 2000)), reason="再次核对为 2 千克").get_json()
    assert again["corrects_id"] == first["id"]
    assert me(api, world["resident"])["balance"] == again["points"] == 35
    assert verify_ledger().ok


def test_only_an_admin_corrects_a_deposit_and_a_refusal_writes_nothing(api, world):
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    worker = api.staff("worker", community_id=community_id("hengkang"))
    for caller in (world["collector"], worker, world["resident"]):
        assert_error(correct(api, world, wrong["id"], lines(("paper", 1000)), as_=caller), 403, "forbidden")
    assert_error(correct(api, world, 999_999, lines(("paper", 1000))), 404, "not_found")
    for bad in (
        {"items": [], "reason": "核对"},
        {"items": lines(("paper", 1000))},
        {"items": lines(("wood", 1)), "reason": "核对"},
    ):
        response = api.post(f"/deposits/{wrong['id']}/correction", as_=world["admin"], json=bad)
        assert_error(response, 422, "validation_error")
    assert (count(Deposit), count(DepositCorrection), count(LedgerEntry)) == (1, 0, 1)
    assert me(api, world["resident"])["balance"] == 176


def test_a_correction_is_refused_only_if_it_takes_back_more_than_is_left(api, world):
    """370 g typed for 730 g, the 5 points spent: the resident is owed more, and gets it."""
    wrong = deposit_ok(api, world, lines(("plastic", 370)))
    spent = api.post(f"/residents/{world['resident'].id}/adjustments", as_=world["admin"],
                     json={"delta": -wrong["points"], "reason": "兑换"})  # fmt: skip
    assert spent.status_code == 201
    right = correct(api, world, wrong["id"], lines(("plastic", 730))).get_json()
    assert right["points"] == 10
    assert me(api, world["resident"])["balance"] == 10 - 5  # the 5 spent stay spent
    assert verify_ledger().ok


def test_a_correction_counts_against_todays_caps_without_the_credit_it_replaces(api, clock, world):
    """190 points of paper corrected to 195 on the same day: the cap of 200 holds the right load, not both."""
    wrong = deposit_ok(api, world, lines(("paper", 10_800)))
    assert wrong["points"] == 190
    right = correct(api, world, wrong["id"], lines(("paper", 11_100))).get_json()
    assert right["points"] == 195
    caps = {c["activity"]: c["used"] for c in api.get("/me/caps", as_=world["resident"]).get_json()["items"]}
    assert caps["sorting:paper"] == 195
    # a day later, over what is left today: refused whole, in words for the admin, not the collector's
    old = deposit_ok(api, world, lines(("plastic", 1000)))
    clock.advance(days=1)
    deposit_ok(api, world, lines(("paper", 11_300)), code=api.member_code(world["resident"]))  # 199 today
    error = assert_error(correct(api, world, old["id"], lines(("paper", 1000))), 409, "cap_reached")
    assert error["message"].endswith("本次未更正，原投递不变：可选择按上限记录（超出部分不计积分），或明天再更正")
    fitted = api.post(f"/deposits/{old['id']}/correction", as_=world["admin"],
                      json={"items": lines(("paper", 1000)), "reason": "核对", "fit_to_caps": True})  # fmt: skip
    assert fitted.get_json()["points"] == 1
    assert verify_ledger().ok


def test_a_correction_is_refused_in_words_for_the_admin_at_a_retired_point_or_a_frozen_account(api, world):
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    assert api.patch(f"/collection-points/{world['a']}", as_=world["admin"], json={"active": False}).status_code == 200
    error = assert_error(correct(api, world, wrong["id"], lines(("paper", 1000))), 409, "invalid_state")
    assert error["message"] == "该回收点已停用：请先重新启用回收点，再更正这笔投递"
    assert api.patch(f"/collection-points/{world['a']}", as_=world["admin"], json={"active": True}).status_code == 200
    assert api.patch(f"/residents/{world['resident'].id}", as_=world["admin"],
                     json={"status": "frozen", "reason": "异常刷分"}).status_code == 200  # fmt: skip
    error = assert_error(correct(api, world, wrong["id"], lines(("paper", 1000))), 403, "account_frozen")
    assert error["message"] == "该居民账户已冻结，不能按新重量记录：可先冲正这笔积分，解冻后再更正"
    assert (count(Deposit), count(DepositCorrection), count(LedgerEntry)) == (1, 0, 1)


def test_a_long_reason_is_kept_whole_and_an_id_out_of_range_is_not_found(api, world):
    """The reason is kept beside the ledger's chain (an adjustment's is too), in its own 200 characters: the
    reversal's memo is the system's 更正投递."""
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    too_long = correct(api, world, wrong["id"], lines(("paper", 1000)), reason="称" * 201)
    assert "reason" in assert_error(too_long, 422, "validation_error")["details"]["fields"]
    assert correct(api, world, wrong["id"], lines(("paper", 1000)), reason="称" * 200).status_code == 201
    entries = api.get("/me/ledger", as_=world["resident"]).get_json()["items"]
    assert entries[0]["memo"] == "更正投递：" + "称" * 200
    assert verify_ledger().ok
    assert_error(correct(api, world, 2**63 - 1, lines(("paper", 1))), 404, "not_found")


def test_points_already_spent_cannot_be_taken_back_by_a_correction(api, world):
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    spent = api.post(f"/residents/{world['resident'].id}/adjustments", as_=world["admin"],
                     json={"delta": -170, "reason": "兑换后人工扣减"})  # fmt: skip
    assert spent.status_code == 201
    error = assert_error(correct(api, world, wrong["id"], lines(("paper", 1000))), 409, "insufficient_points")
    assert error["message"]
    assert (count(Deposit), count(DepositCorrection), count(LedgerEntry)) == (1, 0, 2)
    assert me(api, world["resident"])["balance"] == 6


def test_a_deposit_worth_nothing_or_reversed_already_is_corrected_without_a_second_reversal(api, world):
    nothing = deposit_ok(api, world, lines(("glass", 10)))  # 2.6 g: 0 points, no entry
    assert nothing["entry_id"] is None
    assert correct(api, world, nothing["id"], lines(("glass", 1000))).get_json()["points"] == 3
    reversed_ = deposit_ok(api, world, lines(("paper", 1000)))
    assert api.post(f"/ledger/entries/{reversed_['entry_id']}/reverse", as_=world["admin"],
                    json={"reason": "称重错误"}).status_code in (200, 201)  # fmt: skip
    assert correct(api, world, reversed_["id"], lines(("paper", 2000))).get_json()["points"] == 35
    kinds = [e["kind"] for e in api.get("/me/ledger", as_=world["resident"]).get_json()["items"]]
    assert kinds.count("reverse") == 1
    assert me(api, world["resident"])["balance"] == 3 + 35
    assert verify_ledger().ok


def test_a_correction_retried_with_its_key_is_answered_again_not_made_twice(api, world):
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    headers = {"Idempotency-Key": "fix-1"}
    first = correct(api, world, wrong["id"], lines(("paper", 1000)), headers=headers)
    again = correct(api, world, wrong["id"], lines(("paper", 1000)), headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert count(DepositCorrection) == 1


@pg_concurrency
def test_parallel_corrections_of_one_deposit_make_one(api, app, world):
    """Two admins correcting the same deposit at once: one correction, one reversal; the other is told it was."""
    wrong = deposit_ok(api, world, lines(("paper", 10_000)))
    zero = deposit_ok(api, world, lines(("glass", 10)))  # no credit to reverse: the corrections' key decides
    for target, attempts in ((wrong, 6), (zero, 6)):
        body = {"items": lines(("paper", 1000)), "reason": "并发更正"}
        path = f"/api/v1/deposits/{target['id']}/correction"
        post = lambda client, i, path=path, body=body: client.post(path, json=body, headers=world["admin"].auth)  # noqa: E731
        responses = race(app, post, attempts)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] + [409] * (attempts - 1), [r.get_json() for r in responses]
        refused = [r.get_json()["error"] for r in responses if r.status_code == 409]
        assert {(e["code"], e["message"][:9]) for e in refused} == {("invalid_state", "这笔投递已经更正过")}
    assert count(DepositCorrection) == 2
    assert me(api, world["resident"])["balance"] == 18 + 18
    report = verify_ledger()
    assert report.ok, report.problems


def test_the_correction_service_keeps_its_own_rules_whoever_calls_it(api, world):
    """The route and the admin page check the role, the id and the page's resident first; the service checks them
    again, for any other caller (a CLI, a new page): a worker or collector never rewrites a resident's credit, an
    id past the column is not found (not a driver's overflow), and a page about resident B never corrects A's."""
    made = deposit_ok(api, world, lines(("plastic", 12_500)))
    entries = count(LedgerEntry)
    fix = {"items": lines(("plastic", 1250)), "reason": "误录"}
    for role in ("worker", "collector"):
        actor = Actor(kind="staff", id=world["admin"].id, role=role, community_id=community_id("hengkang"),
                      collection_point_ids=frozenset({world["a"]}))  # fmt: skip
        with pytest.raises(Forbidden):
            sorting.correct_deposit(actor, made["id"], fix)
        db.session.rollback()
    admin = Actor(kind="staff", id=world["admin"].id, role="admin")
    with pytest.raises(NotFound):
        sorting.correct_deposit(admin, 2**63, fix)
    db.session.rollback()
    with pytest.raises(NotFound):
        sorting.correct_deposit(admin, made["id"], fix, of_resident=api.resident().id)
    db.session.rollback()
    assert (count(Deposit), count(DepositCorrection), count(LedgerEntry)) == (1, 0, entries)
