"""The server-rendered admin site: sessions, CSRF, scopes, and every page over the same services as the API."""

from __future__ import annotations

import html
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import g
from flask.sessions import NullSession

from admin import ledger_pages
from app.audit.models import AuditEvent
from app.auth.guards import Actor
from app.carbon.models import Rule
from app.common import encode_cursor
from app.db import db
from app.errors import Forbidden
from app.exchange.models import Store
from app.ledger import service as ledger
from app.ledger.models import Account, LedgerEntry
from app.people import service as people
from app.people.models import Community, Organization, Resident, Staff
from app.sorting import service as sorting
from app.sorting.models import CollectionPoint, DepositCorrection, Device
from tests.conftest import ROOT, SHANGHAI, assert_error, community_id, count, without_append_only_guard

PASSWORD = "password-123"
SYSTEM = Actor(kind="system", id=0, role="admin")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A test client that behaves like a browser on the admin site: it keeps the session cookie and
    sends the CSRF token from the last page it read."""

    def __init__(self, client):
        self.client = client
        self.token: str | None = None

    def _remember(self, response):
        found = CSRF.search(response.get_data(as_text=True)) if response.mimetype == "text/html" else None
        if found:
            self.token = found.group(1)
        return response

    def get(self, path: str, **kwargs):
        return self._remember(self.client.get(path, **kwargs))

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kwargs):
        data = dict(data or {})
        if csrf:
            if self.token is None:
                self.get("/admin/login")
            data.setdefault("csrf_token", self.token)
        return self._remember(self.client.post(path, data=data, **kwargs))

    def login(self, username: str, password: str = PASSWORD, **kwargs):
        self.get("/admin/login")
        response = self.post("/admin/login", {"username": username, "password": password}, **kwargs)
        if response.status_code == 302:
            self.get("/admin/")  # the login hands out a new CSRF token
        return response


def text(response) -> str:
    return response.get_data(as_text=True)


def username_of(caller) -> str:
    return db.session.get(Staff, caller.id).username


@pytest.fixture
def browser(app, db_session):
    return Browser(app.test_client())


@pytest.fixture
def admin(api):
    return api.staff("admin", display_name="经发办管理员")


@pytest.fixture
def as_admin(browser, admin):
    assert browser.login(username_of(admin)).status_code == 302
    return browser


@pytest.fixture
def worker(api):
    return api.staff("worker", community_id=community_id("hengkang"))


@pytest.fixture
def as_worker(browser, worker):
    assert browser.login(username_of(worker)).status_code == 302
    return browser


def make_point(name: str = "恒康一号站", community: str = "hengkang") -> CollectionPoint:
    return sorting.create_point(SYSTEM, {"name": name, "community_id": community_id(community), "kind": "station"})


def weighed(api, collector, point_id: int, resident, *lines: tuple[str, int]) -> dict:
    """A collector's deposit of these (category, grams) lines for the resident, as answered."""
    body = {"member_code": api.member_code(resident), "collection_point_id": point_id,
            "items": [{"category": category, "weight_g": grams} for category, grams in lines]}  # fmt: skip
    response = api.post("/deposits", as_=collector, json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def dashboard_cards(browser) -> dict[str, str]:
    """The dashboard's cards, label to value."""
    page = text(browser.get("/admin/"))
    return dict(re.findall(r'<div class="muted">([^<]+)</div><div class="value">([^<]+)</div>', page))


def balance_of(resident_id: int) -> int:
    return ledger.profile(resident_id)["balance"]


# --- login, logout, session -----------------------------------------------------------------------------------


def test_login_page_sets_a_hardened_session_cookie(browser):
    response = browser.get("/admin/login")
    assert response.status_code == 200
    assert "管理后台登录" in text(response)
    assert browser.token
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_login_success_lands_on_the_dashboard(browser, admin):
    response = browser.login(username_of(admin))
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/admin/")
    page = browser.get("/admin/")
    assert page.status_code == 200
    assert "首页" in text(page)
    assert "经发办管理员" in text(page)


def test_wrong_password_rerenders_the_form_with_401(browser, admin):
    response = browser.login(username_of(admin), "wrong-password")
    assert response.status_code == 401
    assert "用户名或密码错误" in text(response)
    assert username_of(admin) in text(response)  # the username stays filled in
    assert browser.get("/admin/").status_code == 302  # still not logged in


def test_unknown_user_gets_the_same_answer(browser):
    response = browser.login("nobody-here")
    assert response.status_code == 401
    assert "用户名或密码错误" in text(response)


@pytest.mark.parametrize("role", ["merchant", "collector"])
def test_resident_facing_staff_roles_are_refused(api, browser, role):
    if role == "merchant":
        org = db.session.scalar(sa.select(Organization).limit(1))
        store = Store(name=f"绿色兑换超市-{uuid.uuid4().hex[:6]}", organization_id=org.id)
        db.session.add(store)
        db.session.commit()
        caller = api.staff("merchant", store_ids=[store.id], organization_id=org.id)
    else:
        caller = api.staff("collector", collection_point_ids=[make_point().id])
    response = browser.login(username_of(caller))
    assert response.status_code == 403
    assert "不能登录管理后台" in text(response)
    assert browser.get("/admin/").status_code == 302


def test_pages_need_a_login_and_come_back_after_it(browser, admin):
    response = browser.get("/admin/residents?status=frozen")
    assert response.status_code == 302
    assert "/admin/login?next=" in response.headers["Location"]
    browser.get(response.headers["Location"])
    login = browser.post(
        "/admin/login",
        {"username": username_of(admin), "password": PASSWORD, "next": "/admin/residents?status=frozen"},
    )
    assert login.headers["Location"].endswith("/admin/residents?status=frozen")


def test_next_never_leaves_the_admin_site(browser, admin):
    browser.get("/admin/login")
    login = browser.post(
        "/admin/login", {"username": username_of(admin), "password": PASSWORD, "next": "//evil.example/"}
    )
    assert login.status_code == 302
    assert login.headers["Location"].endswith("/admin/")
    # a line break cannot go into a Location header: the login lands on the dashboard rather than failing
    again = browser.get("/admin/login?next=/admin/%0d%0aX-Injected:1")
    assert again.status_code == 302
    assert again.headers["Location"].endswith("/admin/")


def test_logout_ends_the_session(as_admin):
    response = as_admin.post("/admin/logout")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/admin/login")
    assert "已退出登录" in text(as_admin.get("/admin/login"))
    assert as_admin.get("/admin/").status_code == 302


def test_logout_is_post_only(as_admin):
    response = as_admin.get("/admin/logout")
    assert response.status_code == 303  # to the site's first page, still signed in
    assert response.headers["Location"] == "/admin/"
    assert as_admin.get("/admin/").status_code == 200


def test_page_titles_say_whose_page_and_which_error(api, as_admin):
    """A tab's title is what a worker with several tabs open, or a screen reader, goes by."""
    resident = api.resident(community_code="hengkang")
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    assert re.search(r"<title>(.+) 的积分 · 湾区绿色积分</title>", page).group(1) in page.split("<h1>")[1]
    assert "<title>找不到（404） · 湾区绿色积分</title>" in text(as_admin.get("/admin/no-such-page"))


def test_an_actions_address_opened_again_leads_to_its_page(api, as_admin):
    """A refused form's page stays at the action's address; a phone reopening the tab asks it by GET. It goes to
    the nearest page above it, not to a 405."""
    resident = api.resident(community_code="hengkang")
    for action, page in (
        (f"/admin/residents/{resident.id}/adjustments", f"/admin/residents/{resident.id}"),
        (f"/admin/residents/{resident.id}/entries/5/reverse", f"/admin/residents/{resident.id}"),
        (f"/admin/residents/{resident.id}/status?q=x", f"/admin/residents/{resident.id}"),
        ("/admin/staff/3/active", "/admin/staff"),
        ("/admin/points/7/devices/2/active", "/admin/points/7"),
    ):
        response = as_admin.get(action)
        assert (response.status_code, response.headers.get("Location")) == (303, page), action
    assert as_admin.client.open("/admin/residents", method="DELETE").status_code == 405  # other methods: as before


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", "/admin/logout", 405, "POST"),
        ("PATCH", "/admin/", 405, "GET, HEAD"),
        ("DELETE", "/admin/residents", 405, "GET, HEAD"),
        ("DELETE", "/admin/no-such-page", 404, None),
        ("POST", "/admin/no-such-page", 404, None),
    ],
)
def test_wrong_methods_and_paths_get_the_sites_html_error_page(as_admin, method, path, status, allow):
    """Not the API's JSON 405, and with the site's headers; no CSRF token is needed to be told so."""
    response = as_admin.client.open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert response.headers.get("Allow") == allow
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert ("不支持该请求方法" if status == 405 else "页面不存在") in text(response)


def test_head_on_the_login_page_is_not_a_login_attempt(app, api):
    browser = Browser(app.test_client())
    assert browser.client.head("/admin/login").status_code == 200
    assert browser.client.get("/admin/login").status_code == 200


def test_a_deactivated_account_is_logged_out_on_its_next_request(as_admin, api):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    as_admin.post("/admin/logout")
    as_admin.login(username_of(worker))
    assert as_admin.get("/admin/").status_code == 200
    people.update_staff(SYSTEM, worker.id, {"active": False})
    response = as_admin.get("/admin/")
    assert response.status_code == 302
    assert "账户已停用" in text(as_admin.get(response.headers["Location"]))


def test_a_member_changes_its_own_password_and_stays_logged_in_here_only(as_admin, admin, app, clock):
    elsewhere = Browser(app.test_client())
    assert elsewhere.login(username_of(admin)).status_code == 302
    clock.advance(seconds=1)
    assert "修改密码" in text(as_admin.get("/admin/"))
    as_admin.get("/admin/password")
    form = {"current_password": PASSWORD, "new_password": "another-pass-77", "confirm_password": "another-pass-77"}
    response = as_admin.post("/admin/password", form)
    assert response.status_code == 302, text(response)
    assert "密码已修改" in text(as_admin.get(response.headers["Location"]))
    assert as_admin.get("/admin/residents").status_code == 200  # this browser keeps going
    assert elsewhere.get("/admin/residents").status_code == 302  # the other one is logged out
    assert Browser(app.test_client()).login(username_of(admin)).status_code == 401  # the old password is gone
    assert Browser(app.test_client()).login(username_of(admin), "another-pass-77").status_code == 302


@pytest.mark.parametrize(
    ("current", "new", "confirm", "shown"),
    [
        ("wrong-password", "another-pass-77", "another-pass-77", "当前密码"),
        (PASSWORD, "another-pass-77", "another-pass-78", "两次输入的新密码不一致"),
        (PASSWORD, "short", "short", "新密码"),
    ],
)
def test_a_refused_password_change_says_why_and_changes_nothing(as_admin, admin, app, current, new, confirm, shown):
    as_admin.get("/admin/password")
    form = {"current_password": current, "new_password": new, "confirm_password": confirm}
    response = as_admin.post("/admin/password", form)
    assert response.status_code == 422
    assert shown in text(response)
    assert as_admin.get("/admin/residents").status_code == 200
    assert Browser(app.test_client()).login(username_of(admin)).status_code == 302


def test_the_session_holds_only_who_since_when_and_the_csrf_token(as_admin, admin):
    with as_admin.client.session_transaction("/admin/") as session:
        assert set(session) <= {"admin_staff_id", "admin_csrf", "admin_sid", "admin_since", "_flashes"}
        assert session["admin_staff_id"] == admin.id


def test_logging_out_revokes_the_cookie_itself(as_admin, app):
    kept = as_admin.client.get_cookie("session")
    assert as_admin.post("/admin/logout").status_code == 302
    thief = app.test_client()
    thief.set_cookie(kept.key, kept.value)
    response = thief.get("/admin/residents")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]


def test_a_password_change_or_deactivation_ends_earlier_admin_sessions(as_admin, admin, api, app, clock):
    for change in ({"password": "a-brand-new-password"}, {"active": False}):
        other = api.staff("admin")
        stolen = Browser(app.test_client())
        stolen.login(username_of(other))
        assert stolen.get("/admin/residents").status_code == 200
        clock.advance(seconds=0.4)  # within the same second
        assert api.patch(f"/staff/{other.id}", as_=admin, json=change).status_code == 200
        if change.get("active") is False:
            assert api.patch(f"/staff/{other.id}", as_=admin, json={"active": True}).status_code == 200
        response = stolen.get("/admin/residents")
        assert response.status_code == 302, change
        assert "登录已失效" in text(stolen.get(response.headers["Location"]))
        assert (
            Browser(app.test_client())
            .login(username_of(other), **({"password": change["password"]} if "password" in change else {}))
            .status_code
            == 302
        )  # a new login works


def test_api_requests_neither_read_nor_set_the_admin_cookie(as_admin, app):
    """The cookie session belongs to the admin site: the API and the probes never decode it or send one back."""
    with as_admin.client.session_transaction("/api/v1/rules") as session:
        assert isinstance(session, NullSession)
        with pytest.raises(RuntimeError, match="only the admin site"):
            session["admin_staff_id"] = 1
    for path in ("/api/v1/rules", "/healthz", "/api/v1/me"):
        assert "Set-Cookie" not in as_admin.client.get(path).headers
    assert as_admin.get("/admin/").status_code == 200  # the admin still has its session


# --- CSRF and HTML errors ----------------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(as_admin):
    before = count(Community)
    g.pop("admin_staff", None)  # the test's app context (and its g) outlives a request: start as a server would
    response = as_admin.post("/admin/communities", {"code": "nocsrf", "name": "无令牌社区"}, csrf=False)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "页面已过期" in text(response)
    # A reload would send the same stale form again; going back keeps what was typed, on a page with a fresh token.
    assert "请返回上一页重新提交" in text(response)
    assert "返回首页" in text(response)  # still signed in: the menu stays
    assert "前往登录" not in text(response)
    assert 'href="/admin/communities"' in text(response)
    assert count(Community) == before


def test_a_form_sent_after_signing_out_elsewhere_goes_to_the_sign_in_and_back_to_its_page(as_admin, admin, app):
    """Signed out in another tab (or the cookie's 12 hours ran out): the form is not blamed on "another window"
    (a 400 whose Back led to the sign-in anyway); the sign-in says it was not sent and returns to the form's page."""
    form_page = as_admin.get("/admin/communities?q=x")
    assert form_page.status_code == 200
    token = as_admin.token
    assert as_admin.post("/admin/logout").status_code == 302  # the other tab
    before = count(Community)
    response = as_admin.post(
        "/admin/communities",
        {"code": "late", "name": "迟到社区", "csrf_token": token},
        csrf=False,
        headers={"Referer": "http://localhost/admin/communities?q=x"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=/admin/communities?q%3Dx"
    assert "登录已失效，刚才的操作没有提交：请重新登录后再操作一次" in text(as_admin.get(response.headers["Location"]))
    assert count(Community) == before
    back = as_admin.post("/admin/login?next=/admin/communities?q%3Dx",
                         {"username": username_of(admin), "password": PASSWORD})  # fmt: skip
    assert back.headers["Location"] == "/admin/communities?q=x"
    # a form from another site, signed out, is sent to the sign-in with nowhere to return to
    elsewhere = Browser(app.test_client()).client.post(
        "/admin/communities", data={"code": "x1", "name": "外站"}, headers={"Referer": "https://evil.example/admin/x"}
    )
    assert elsewhere.headers["Location"] == "/admin/login"
    assert count(Community) == before
    # a look (HEAD) is not a form sent; and signing out signed out just goes to the sign-in
    looked = Browser(app.test_client())
    head = looked.client.head("/admin/residents", headers={"Referer": "http://localhost/admin/staff"})
    assert head.headers["Location"] == "/admin/login?next=/admin/residents"
    assert "刚才的操作没有提交" not in text(looked.get("/admin/login"))
    gone = Browser(app.test_client()).client.post("/admin/logout")
    assert gone.headers["Location"] == "/admin/login"


def test_a_session_ended_by_a_password_change_returns_to_the_page_after_signing_in(as_admin, admin, api, app, clock):
    other = api.staff("admin")
    ended = Browser(app.test_client())
    ended.login(username_of(other))
    clock.advance(seconds=0.4)
    assert api.patch(f"/staff/{other.id}", as_=admin, json={"password": "a-brand-new-password"}).status_code == 200
    response = ended.get("/admin/points?community_id=1")
    assert response.headers["Location"] == "/admin/login?next=/admin/points?community_id%3D1"


def test_post_with_a_wrong_csrf_token_is_refused(as_admin):
    response = as_admin.post("/admin/communities", {"code": "badcsrf", "name": "错误令牌", "csrf_token": "x" * 43})
    assert response.status_code == 400


def test_login_itself_needs_the_csrf_token(browser, admin):
    response = browser.client.post("/admin/login", data={"username": username_of(admin), "password": PASSWORD})
    assert response.status_code == 400
    assert browser.get("/admin/").status_code == 302


def test_a_login_page_left_open_too_long_is_shown_again_ready_to_sign_in(browser, admin):
    """Its token went with an old cookie (12 hours, or a sign-in in another tab): the form comes back with the
    username kept and a fresh token, not an error page to find the way back from."""
    stale = {"username": username_of(admin), "password": PASSWORD, "csrf_token": "from-a-page-long-gone"}
    response = browser.client.post("/admin/login?next=/admin/points", data=stale)
    assert response.status_code == 400
    page = text(response)
    assert "页面已过期，请重新输入密码登录" in page
    assert f'value="{username_of(admin)}"' in page
    assert browser.get("/admin/").status_code == 302  # not signed in by the stale form
    fresh = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    again = browser.client.post("/admin/login?next=/admin/points", data=stale | {"csrf_token": fresh})
    assert (again.status_code, again.headers["Location"]) == (302, "/admin/points")


def test_unknown_admin_paths_are_html_404s(as_admin, browser):
    response = as_admin.get("/admin/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "页面不存在" in text(response)
    assert as_admin.get("/admin/residents/abc").status_code == 404
    assert as_admin.get("/admin/residents/999999").status_code == 404


def test_api_404s_stay_json(api):
    response = api.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.is_json


# --- every page ------------------------------------------------------------------------------------------------


@pytest.fixture
def scenery(api, admin):
    resident = api.resident(community_code="hengkang")
    point = make_point()
    return {"resident": resident.id, "point": point.id}


PAGES = [
    ("/admin/", "累计活动积分"),
    ("/admin/communities", "恒康社区"),
    ("/admin/organizations", "经发办"),
    ("/admin/staff", "新建账号"),
    ("/admin/residents", "冻结"),
    ("/admin/residents/{resident}", "当前余额"),
    ("/admin/rules", "sorting:paper"),
    ("/admin/rules/publish?activity=sorting:paper", "发布第 2 版"),
    ("/admin/points", "恒康一号站"),
    ("/admin/points/{point}", "打卡海报二维码"),
    ("/admin/verify", "开始校验"),
]


@pytest.mark.parametrize(("path", "expected"), PAGES)
def test_every_page_renders_for_admin(as_admin, scenery, path, expected):
    response = as_admin.get(path.format(**scenery))
    assert response.status_code == 200, text(response)
    assert response.mimetype == "text/html"
    body = text(response)
    assert expected in body
    assert 'lang="zh-CN"' in body
    assert "账本校验" in body  # the admin's menu


def test_worker_menu_and_dashboard_are_scoped(as_worker, api):
    api.resident(community_code="hengkang")
    frozen = api.resident(community_code="hengkang")
    people.set_resident_status(SYSTEM, frozen.id, "frozen", "测试冻结")
    api.resident(community_code="xinhaiwan")
    api.resident(community_code="xinhaiwan")
    body = text(as_worker.get("/admin/"))
    assert "恒康社区" in body
    assert dashboard_cards(as_worker)["居民"] == "2"
    assert "本社区，其中已冻结 1 人" in body
    assert "账本校验" not in body
    assert "居民" in body
    assert 'href="/admin/organizations"' in body  # every staff member reads the alliance members
    assert as_worker.get("/admin/organizations").status_code == 200


def test_the_residents_page_finds_a_nickname_and_keeps_the_search_when_paging(api, as_admin, monkeypatch):
    import admin.people_pages

    monkeypatch.setattr(admin.people_pages, "PAGE_SIZE", 1)
    for nickname in ("张三丰", "张三", "李四"):
        api.patch("/me", as_=api.resident(community_code="hengkang"), json={"nickname": nickname})
    page = text(as_admin.get("/admin/residents?q=张三"))
    assert 'value="张三"' in page
    assert "李四" not in page
    following = re.search(r'href="([^"]+cursor=[^"]+)">下一页', page).group(1).replace("&amp;", "&")
    assert "q=" in following
    rest = text(as_admin.get(following))
    assert "张三" in rest
    assert "李四" not in rest


def test_the_dashboard_counts_activity_points_apart_from_adjustments(as_admin, api):
    before = int(dashboard_cards(as_admin)["累计活动积分"])
    ledger.adjust(SYSTEM, api.resident().id, 50, "补发积分")
    assert int(dashboard_cards(as_admin)["累计活动积分"]) == before  # an adjustment is not activity
    assert "不含人工调整" in text(as_admin.get("/admin/"))


def test_alliance_member_sees_its_own_staff_only(api, browser):
    orgs = list(db.session.scalars(sa.select(Organization).order_by(Organization.id).limit(2)))
    mine = api.staff("alliance", organization_id=orgs[0].id)
    other = api.staff("alliance", organization_id=orgs[1].id)
    browser.login(username_of(mine))
    body = text(browser.get("/admin/staff"))
    assert username_of(mine) in body
    assert username_of(other) not in body
    response = browser.post(
        "/admin/staff", {"username": "sneaky-worker", "password": PASSWORD, "role": "worker", "community_id": "1"}
    )
    assert response.status_code == 403
    assert "联盟成员只能创建本单位的店员或联盟账号" in text(response)
    assert db.session.scalar(sa.select(Staff).filter_by(username="sneaky-worker")) is None


def test_worker_cannot_open_admin_only_pages(as_worker):
    for path in ("/admin/staff", "/admin/verify", "/admin/rules/publish?activity=sorting:paper"):
        response = as_worker.get(path)
        assert response.status_code == 403, path
        assert "没有权限" in text(response)
    # nor run the ledger's verification (it reads the whole ledger), and nothing is kept
    from app.ledger.models import LedgerCheck

    assert as_worker.post("/admin/verify").status_code == 403
    assert db.session.scalar(sa.select(sa.func.count()).select_from(LedgerCheck)) == 0


# --- communities, organisations, staff -----------------------------------------------------------------------


def test_create_community_via_form(as_admin):
    response = as_admin.post("/admin/communities", {"code": "haibin", "name": "海滨社区"})
    assert response.status_code == 302
    assert db.session.scalar(sa.select(Community).filter_by(code="haibin")).name == "海滨社区"
    page = text(as_admin.get("/admin/communities"))
    assert "已创建社区「海滨社区」" in page
    event = db.session.scalar(sa.select(AuditEvent).filter_by(action="community.create"))
    assert event.actor_type == "staff"


def test_duplicate_community_rerenders_the_form_with_409(as_admin):
    response = as_admin.post("/admin/communities", {"code": "hengkang2", "name": "恒康社区"})
    assert response.status_code == 409
    body = text(response)
    assert "社区名称或编码已存在" in body
    assert 'value="hengkang2"' in body  # what was typed stays in the form


def test_invalid_community_code_shows_the_field_message(as_admin):
    response = as_admin.post("/admin/communities", {"code": "空 格", "name": "测试社区"})
    assert response.status_code == 422
    assert "编码：只能包含英文字母、数字和 _ -" in text(response)


def test_worker_cannot_create_a_community(as_worker):
    response = as_worker.post("/admin/communities", {"code": "x1", "name": "越权社区"})
    assert response.status_code == 403
    assert db.session.scalar(sa.select(Community).filter_by(code="x1")) is None


def test_create_organization_via_form(as_admin):
    response = as_admin.post(
        "/admin/organizations",
        {"name": "湾区绿色科技公司", "kind": "enterprise", "community_id": community_id("xinhaiwan")},
    )
    assert response.status_code == 302
    org = db.session.scalar(sa.select(Organization).filter_by(name="湾区绿色科技公司"))
    assert (org.kind, org.community_id) == ("enterprise", community_id("xinhaiwan"))
    assert "企业" in text(as_admin.get("/admin/organizations"))


def test_create_staff_via_form(as_admin, browser):
    response = as_admin.post(
        "/admin/staff",
        {
            "username": "hk-worker",
            "password": "a-long-password",
            "role": "worker",
            "display_name": "恒康社工",
            "community_id": community_id("hengkang"),
        },
    )
    assert response.status_code == 302, text(response)
    created = db.session.scalar(sa.select(Staff).filter_by(username="hk-worker"))
    assert (created.role, created.community_id) == ("worker", community_id("hengkang"))
    assert "恒康社工" in text(as_admin.get("/admin/staff"))


def test_staff_form_reports_a_missing_scope(as_admin):
    response = as_admin.post("/admin/staff", {"username": "no-scope", "password": "a-long-password", "role": "worker"})
    assert response.status_code == 422
    assert "社区工作者必须指定所属社区" in text(response)


def test_an_admin_deactivates_and_reactivates_an_account_from_the_staff_page(api, as_admin, clock):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    clock.advance(seconds=1)  # the change comes after the worker's session began
    page = text(as_admin.get("/admin/staff"))
    assert f"/admin/staff/{worker.id}/active" in page
    refused = as_admin.post(f"/admin/staff/{worker.id}/active", {"active": "0"})
    assert refused.status_code == 422
    assert "请勾选确认" in text(refused)
    assert api.get("/staff/me", as_=worker).status_code == 200
    assert as_admin.post(f"/admin/staff/{worker.id}/active", {"active": "0", "confirm": "yes"}).status_code == 302
    db.session.expire_all()
    assert db.session.get(Staff, worker.id).active is False
    assert_error(api.get("/staff/me", as_=worker), 401, "unauthorized")  # its sessions end at once
    assert "已停用" in text(as_admin.get("/admin/staff"))
    assert as_admin.post(f"/admin/staff/{worker.id}/active", {"active": "1"}).status_code == 302
    db.session.expire_all()
    assert db.session.get(Staff, worker.id).active is True
    assert_error(api.get("/staff/me", as_=worker), 401, "token_revoked")  # a session from before stays ended
    events = db.session.scalars(
        sa.select(AuditEvent.details).filter_by(action="staff.update", target_id=str(worker.id)).order_by(AuditEvent.id)
    ).all()
    assert events == [{"active": False}, {"active": True}]


def test_an_admin_resets_a_password_from_the_staff_page(api, as_admin, clock):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    clock.advance(seconds=1)
    short = as_admin.post(f"/admin/staff/{worker.id}/password", {"password": "short"})
    assert short.status_code == 422
    assert "密码" in text(short)
    response = as_admin.post(f"/admin/staff/{worker.id}/password", {"password": " a new pass phrase "})
    assert response.status_code == 302
    assert_error(api.get("/staff/me", as_=worker), 401, "token_revoked")
    username = username_of(worker)
    login = api.post("/auth/login", json={"username": username, "password": " a new pass phrase "})  # as typed
    assert login.status_code == 200


def test_an_admin_cannot_deactivate_itself_from_the_staff_page(admin, as_admin):
    assert f"/admin/staff/{admin.id}/active" not in text(as_admin.get("/admin/staff"))
    response = as_admin.post(f"/admin/staff/{admin.id}/active", {"active": "0", "confirm": "yes"})
    assert response.status_code == 409
    assert "不能停用自己的账户" in text(response)
    db.session.expire_all()
    assert db.session.get(Staff, admin.id).active is True


def test_ones_own_row_on_the_staff_page_links_to_the_password_change_instead_of_a_reset(admin, as_admin):
    page = text(as_admin.get("/admin/staff"))
    assert f"/admin/staff/{admin.id}/password" not in page
    assert 'href="/admin/password"' in page
    response = as_admin.post(f"/admin/staff/{admin.id}/password", {"password": "taken-over-2026"})
    assert response.status_code == 409
    assert "修改自己的密码请使用「修改密码」" in text(response)
    assert as_admin.get("/admin/staff").status_code == 200  # still signed in: nothing was changed


def test_an_alliance_member_manages_only_its_own_organisations_clerks(api, browser):
    cafe, shops = (
        db.session.scalar(sa.select(Organization.id).filter_by(name=n)) for n in ("科学咖啡社", "鑫海湾沿街商铺联合会")
    )
    mine = api.staff("alliance", organization_id=cafe)
    cafe_store = Store(name="咖啡社兑换点", organization_id=cafe)
    shops_store = Store(name="沿街兑换点", organization_id=shops)
    db.session.add_all([cafe_store, shops_store])
    db.session.commit()
    my_clerk = api.staff("merchant", organization_id=cafe, store_ids=[cafe_store.id])
    their_clerk = api.staff("merchant", organization_id=shops, store_ids=[shops_store.id])
    browser.login(username_of(mine))
    page = text(browser.get("/admin/staff"))
    assert f"/admin/staff/{my_clerk.id}/password" in page
    assert f"/admin/staff/{their_clerk.id}/password" not in page
    response = browser.post(f"/admin/staff/{their_clerk.id}/password", {"password": "taken-over-1"})
    assert response.status_code == 404
    assert "工作人员不存在" in text(response)
    assert browser.post(f"/admin/staff/{my_clerk.id}/password", {"password": "reset-by-boss-1"}).status_code == 302
    assert (
        api.post("/auth/login", json={"username": username_of(their_clerk), "password": "taken-over-1"}).status_code
        == 401
    )


# --- residents ------------------------------------------------------------------------------------------------


def test_worker_sees_only_own_community_residents(api, as_worker):
    mine = api.resident(community_code="hengkang")
    theirs = api.resident(community_code="xinhaiwan")
    body = text(as_worker.get("/admin/residents"))
    assert f'/admin/residents/{mine.id}"' in body
    assert f'/admin/residents/{theirs.id}"' not in body
    assert as_worker.get(f"/admin/residents?community_id={community_id('xinhaiwan')}").status_code == 403


def test_worker_cannot_freeze_another_communitys_resident(api, as_worker):
    theirs = api.resident(community_code="xinhaiwan")
    response = as_worker.post(f"/admin/residents/{theirs.id}/status", {"status": "frozen", "reason": "违规刷分"})
    assert response.status_code == 404
    assert "居民不存在" in text(response)
    assert db.session.get(Resident, theirs.id).status == "active"
    assert as_worker.get(f"/admin/residents/{theirs.id}").status_code == 404


def test_freezing_returns_to_the_filtered_list_and_ignores_other_query_keys(api, as_worker):
    """Only the list's own filters and its page go back into the redirect: a crafted ?endpoint= was a 500 (url_for
    clash). The page's cursor goes too: freezing someone on page 2 no longer lands on page 1."""
    mine = api.resident(community_code="hengkang")
    cursor = encode_cursor(mine.id + 1)
    assert f"cursor={cursor}" in text(as_worker.get(f"/admin/residents?status=active&cursor={cursor}"))  # the form's
    path = f"/admin/residents/{mine.id}/status?status=active&endpoint=x&_external=1&cursor={cursor}"
    response = as_worker.post(path, {"status": "frozen", "reason": "多次违规投放"})
    assert response.status_code == 302
    assert response.headers["Location"] == f"/admin/residents?status=active&cursor={cursor}"
    db.session.expire_all()
    assert db.session.get(Resident, mine.id).status == "frozen"


def test_a_points_lists_and_the_rules_show_each_row_as_labelled_lines_on_a_phone(as_admin):
    """As a plain table a phone showed a bin's id and status, with its 停用 button off screen to the right."""
    point = make_point()
    sorting.register_device(SYSTEM, {"code": "bin-hk-011", "collection_point_id": point.id})
    for path in (f"/admin/points/{point.id}", "/admin/rules"):
        page = text(as_admin.get(path))
        assert "<table>" not in page, path
        assert page.count('<table class="stack">') == (3 if "points" in path else 1)
        for row in re.findall(r"<tr>\s*(<td.*?)</tr>", page, re.S):
            cells = re.findall(r"<td([^>]*)>", row)
            assert sum("data-label" in c for c in cells) >= len(cells) - 1, (path, row[:120])  # all but the actions


def test_a_refused_freeze_says_why_in_the_row_the_page_returns_to(api, as_worker):
    """The page returns to the row (the form posts to #fix, its field): a message above a long table was screens
    away from it."""
    mine, other = api.resident(community_code="hengkang"), api.resident(community_code="hengkang")
    response = as_worker.post(f"/admin/residents/{mine.id}/status", {"status": "frozen", "reason": " x "})
    assert response.status_code == 422
    page = text(response)
    row = re.search(rf'<tr id="resident-{mine.id}">(.*?)</tr>', page, re.S)[1]
    assert re.search(r'<div class="alert error" role="alert"[^>]*>', row)
    assert 'aria-invalid="true"' in row
    assert page.count('role="alert"') == 1  # not again above the table
    assert "aria-invalid" not in re.search(rf'<tr id="resident-{other.id}">(.*?)</tr>', page, re.S)[1]
    db.session.expire_all()
    assert db.session.get(Resident, mine.id).status == "active"


def test_a_worker_who_finds_no_resident_is_told_where_one_with_no_community_is_found(api, as_worker):
    resident = api.resident()  # chose no community in the mini-program
    assert api.patch("/me", as_=resident, json={"nickname": "新来的小陈"}).status_code == 200
    page = text(as_worker.get("/admin/residents?q=小陈"))
    assert "新来的小陈" not in page
    assert "没有符合条件的居民。这里只列出本社区的居民：尚未在小程序中选择社区的居民，请经发办查询" in page


def test_a_refused_character_is_said_once_not_twice(api, as_worker):
    """The refusal's message names the field (原因：…) as the list below it does: the box says it once."""
    mine = api.resident(community_code="hengkang")
    response = as_worker.post(f"/admin/residents/{mine.id}/status", {"status": "frozen", "reason": "多次\x00违规"})
    assert response.status_code == 422
    alert = re.search(r'<div class="alert error" role="alert"[^>]*>(.*?)</div>', text(response), re.S)[1]
    assert alert.count("不能包含空字符") == 1
    db.session.expire_all()
    assert db.session.get(Resident, mine.id).status == "active"


def test_worker_freezes_and_unfreezes_own_resident_with_a_reason(api, worker, as_worker):
    mine = api.resident(community_code="hengkang")
    response = as_worker.post(f"/admin/residents/{mine.id}/status", {"status": "frozen", "reason": "多次违规投放"})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Resident, mine.id).status == "frozen"
    assert "已冻结" in text(as_worker.get("/admin/residents"))
    event = db.session.scalar(sa.select(AuditEvent).filter_by(action="resident.frozen"))
    assert event.details["reason"] == "多次违规投放"
    assert (
        as_worker.post(f"/admin/residents/{mine.id}/status", {"status": "active", "reason": "已整改"}).status_code
        == 302
    )
    db.session.expire_all()
    assert db.session.get(Resident, mine.id).status == "active"
    history = text(as_worker.get(f"/admin/residents/{mine.id}"))  # why, when and by whom, newest first
    assert "冻结与解冻记录" in history
    assert history.index("已整改") < history.index("多次违规投放")
    assert history.count(f"<td>{username_of(worker)}</td>") == 2
    # a page opened before that thaw sends it again: nothing changes, nothing more is recorded, and the page says so
    again = as_worker.post(f"/admin/residents/{mine.id}/status", {"status": "active", "reason": "已整改"})
    assert "已处于正常状态，未作更改" in text(as_worker.get(again.headers["Location"]))
    actions = db.session.scalars(
        sa.select(AuditEvent.action).filter_by(target_type="resident", target_id=str(mine.id))
    ).all()
    assert sorted(actions) == ["resident.active", "resident.frozen"]


def test_a_worker_is_told_who_may_lift_an_admins_freeze(api, as_worker):
    resident = api.resident(community_code="hengkang")
    people.set_resident_status(Actor(kind="staff", id=1, role="admin"), resident.id, "frozen", "疑似刷分，平台核查中")
    listed = text(as_worker.get("/admin/residents"))
    assert "由平台管理员冻结，请联系经发办" in listed  # said before the worker tries
    assert f"/admin/residents/{resident.id}/status" not in listed
    response = as_worker.post(f"/admin/residents/{resident.id}/status", {"status": "active", "reason": "居民申诉"})
    assert response.status_code == 403
    assert "该账户由平台管理员冻结，请联系经发办解冻" in text(response)
    db.session.expire_all()
    assert db.session.get(Resident, resident.id).status == "frozen"


def test_freezing_needs_a_reason(api, as_admin):
    resident = api.resident(community_code="hengkang")
    response = as_admin.post(f"/admin/residents/{resident.id}/status", {"status": "frozen", "reason": ""})
    assert response.status_code == 422
    assert "原因" in text(response)
    assert db.session.get(Resident, resident.id).status == "active"


@pytest.mark.parametrize(
    "query", ["community_id=%C2%B2", "community_id=abc", "status=closed", "community_id=99999999999999"]
)
def test_odd_filters_are_ignored_not_errors(as_admin, query):
    assert as_admin.get(f"/admin/residents?{query}").status_code == 200
    assert as_admin.get(f"/admin/points?{query}").status_code == 200


def test_a_bad_cursor_is_a_friendly_422(as_admin):
    response = as_admin.get("/admin/residents?cursor=%%%")
    assert response.status_code == 422
    assert "分页游标无效" in text(response)


def test_admin_filters_residents_by_status(api, as_admin):
    frozen = api.resident(community_code="hengkang")
    active = api.resident(community_code="hengkang")
    people.set_resident_status(SYSTEM, frozen.id, "frozen", "测试")
    body = text(as_admin.get("/admin/residents?status=frozen"))
    assert f'/admin/residents/{frozen.id}"' in body
    assert f'/admin/residents/{active.id}"' not in body


# --- points of a resident ---------------------------------------------------------------------------------------


def test_adjustment_via_form_changes_the_balance_and_shows_the_entry(api, as_admin):
    resident = api.resident(community_code="hengkang")
    response = as_admin.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "30", "reason": "活动补发"})
    assert response.status_code == 302
    assert balance_of(resident.id) == 30
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    assert "已调整 +30 积分，当前余额 30" in page
    assert "活动补发" in page
    assert '<td data-label="来源">人工调整</td>' in page  # its source, in words: no code such as "admin" on the page
    assert "<code>admin</code>" not in page
    assert '<div class="value">30</div>' in page


def test_a_double_submitted_adjustment_form_applies_once(api, as_admin):
    resident = api.resident(community_code="hengkang")
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    reference = re.search(r'name="reference" value="([0-9a-f]{32})"', page).group(1)
    form = {"delta": "30", "reason": "活动补发", "reference": reference}
    assert as_admin.post(f"/admin/residents/{resident.id}/adjustments", dict(form)).status_code == 302
    again = as_admin.post(f"/admin/residents/{resident.id}/adjustments", dict(form))
    assert again.status_code == 409
    assert "已经提交过了" in text(again)
    assert balance_of(resident.id) == 30
    # the page it shows starts a new adjustment: a fresh reference and an empty form, so the next one goes through
    fresh = re.search(r'name="reference" value="([0-9a-f]{32})"', text(again)).group(1)
    assert fresh != reference
    assert 'value="活动补发"' not in text(again)
    next_one = {"delta": "-10", "reason": "扣回多发", "reference": fresh}
    assert as_admin.post(f"/admin/residents/{resident.id}/adjustments", next_one).status_code == 302
    assert balance_of(resident.id) == 20


def test_money_forms_are_not_refilled_by_back_and_land_where_they_answer(api, as_admin):
    """Back after an adjustment showed the page afresh (a new reference) with the browser's refill of the amount and
    reason: a second tap adjusted twice. The forms refuse the refill; each answers at its own place on a phone."""
    resident = api.resident(community_code="hengkang")
    as_admin.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "30", "reason": "活动补发"})
    entry_id = db.session.scalar(sa.select(LedgerEntry.id).where(LedgerEntry.kind == "adjust"))
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    adjust = re.search(r'<form method="post" action="([^"]+/adjustments[^"]*)"[^>]*>', page)
    assert adjust.group(1).endswith("#fix")  # a refusal's field or message
    assert 'autocomplete="off"' in adjust.group(0)
    reverse = re.search(rf'<form method="post" action="([^"]+/entries/{entry_id}/reverse[^"]*)"[^>]*>', page)
    assert reverse.group(1).endswith("#fix")
    assert 'autocomplete="off"' in reverse.group(0)
    assert f'<tr id="entry-{entry_id}">' in page
    assert 'id="adjust"' in page
    done = as_admin.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "5", "reason": "再补发"})
    assert done.headers["Location"].endswith(f"/admin/residents/{resident.id}#entries")  # the new entry, on top
    listing = text(as_admin.get("/admin/residents"))
    assert f'<tr id="resident-{resident.id}">' in listing
    assert re.search(rf'action="[^"]+/residents/{resident.id}/status[^"]*#fix"', listing)


def test_the_daily_lists_stack_their_rows_on_a_phone_each_value_named(api, as_admin):
    """Under 700 px these tables show each row as a block; every value says which column it is, so that the row's
    actions sit beside whom they act on."""
    resident = api.resident(community_code="hengkang")
    ledger.adjust(SYSTEM, resident.id, 12, "测试")
    make_point()
    for path, named in (
        ("/admin/residents", ["ID", "昵称", "社区", "状态", "注册时间"]),
        ("/admin/staff", ["ID", "用户名", "显示名称", "角色", "社区", "单位", "状态", "创建时间"]),
        ("/admin/points", ["ID", "名称", "社区", "类型", "地址", "品类"]),
        (f"/admin/residents/{resident.id}", ["序号", "时间", "类型", "来源", "积分", "余额", "减排（克）", "说明"]),
    ):
        page = text(as_admin.get(path))
        table = page.split('<table class="stack">', 1)[1].split("</table>", 1)[0]
        first_row = table.split("<tbody>", 1)[1].split("</tr>", 1)[0]
        assert re.findall(r'data-label="([^"]+)"', first_row) == named, path


def test_a_points_edit_form_answers_where_it_is(as_admin):
    """Its fields sit far down a phone's page: its refusal shows above them, and the form sends the page there."""
    point = make_point()
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    assert re.search(rf'<div class="panel" id="edit">.*?action="/admin/points/{point.id}#fix"', page, re.S)
    form = {"form": "edit", "name": point.name, "kind": point.kind, "lat": "300", "lng": "121.5"}
    refused = text(as_admin.post(f"/admin/points/{point.id}", form))
    edit_panel = refused.split('id="edit"', 1)[1].split("</form>", 1)[0]
    assert "纬度" in edit_panel.split('<div class="alert error"', 1)[1].split("</div>", 1)[0]
    assert refused.count('<div class="alert error"') == 1  # not at the top of the page as well
    assert re.search(r'<input name="lat" aria-invalid="true" aria-describedby="err-lat" id="fix" autofocus', edit_panel)


def test_a_refused_form_marks_the_fields_it_names(as_admin):
    """Screen readers say which field is wrong, and the eye finds it, beside the box that lists the errors."""
    page = text(as_admin.post("/admin/communities", {"code": "bad code!", "name": "合格名称"}))
    assert re.search(r'<input name="code" aria-invalid="true"', page)
    assert re.search(r'<input name="name" value=', page)  # the field that was right is not marked
    fresh = text(as_admin.get("/admin/communities"))
    assert not re.search(r"<(?:input|select|textarea)[^>]*aria-invalid", fresh)


def test_overdrawing_adjustment_is_refused_on_the_page(api, as_admin):
    resident = api.resident(community_code="hengkang")
    response = as_admin.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "-5", "reason": "扣回"})
    assert response.status_code == 409
    assert "积分不足" in text(response)
    assert balance_of(resident.id) == 0


def test_worker_sees_points_but_cannot_adjust(api, as_worker):
    resident = api.resident(community_code="hengkang")
    page = as_worker.get(f"/admin/residents/{resident.id}")
    assert page.status_code == 200
    assert "人工调整积分" not in text(page)
    response = as_worker.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "10", "reason": "自己加分"})
    assert response.status_code == 403
    assert balance_of(resident.id) == 0


# --- rules ---------------------------------------------------------------------------------------------------


def test_rule_publish_creates_version_2(as_admin, clock):
    response = as_admin.post(
        "/admin/rules/publish",
        {
            "activity": "sorting:paper",
            "co2e_g_per_unit": "1500.5",
            "points": "",
            "daily_cap_points": "80",
            "source": "2026 年复核后的纸类回收因子",
        },
    )
    assert response.status_code == 302, text(response)
    versions = list(db.session.scalars(sa.select(Rule).filter_by(activity="sorting:paper").order_by(Rule.version)))
    assert [r.version for r in versions] == [1, 2]
    new = versions[1]
    assert (str(new.co2e_g_per_unit), new.points, new.daily_cap_points) == ("1500.500", None, 80)
    assert versions[0].valid_to == new.valid_from
    starts = (clock.now + timedelta(seconds=10)).astimezone(SHANGHAI)
    scheduled = text(as_admin.get("/admin/rules"))  # the page after the redirect: the flash, version 1 still in force
    assert f"第 2 版，将于 {starts:%Y-%m-%d %H:%M:%S} 生效" in scheduled
    assert f'新版本将于 <span class="nowrap">{starts:%Y-%m-%d %H:%M:%S}</span> 生效' in scheduled  # kept on one line
    assert "立即生效" not in scheduled
    clock.advance(seconds=11)  # a new version starts once every worker's rule cache can have seen it
    page = text(as_admin.get("/admin/rules"))
    assert "新版本将于" not in page
    assert "1500.5" in page


def test_the_publish_page_names_the_future_version_it_will_replace(api, as_admin, clock):
    start = (clock.now + timedelta(days=300)).astimezone(SHANGHAI)
    body = {
        "activity": "sorting:metal",
        "co2e_g_per_unit": 2000,
        "source": "经发办",
        "effective_from": start.isoformat(),
    }
    assert api.post("/rules", as_=api.staff("admin"), json=body).status_code == 201
    rules = text(as_admin.get("/admin/rules"))
    assert f'新版本将于 <span class="nowrap">{start:%Y-%m-%d %H:%M:%S}</span> 生效' in rules
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:metal"))
    assert f"第 2 版（{start:%Y-%m-%d %H:%M:%S} 起）" in page
    assert "发布第 3 版" in page
    form = {"activity": "sorting:metal", "co2e_g_per_unit": "1900", "points": "", "daily_cap_points": "",
            "source": "更正：生效年份填错"}  # fmt: skip
    assert as_admin.post("/admin/rules/publish", form).status_code == 302
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:metal"))
    assert "第 2 版（" not in page  # withdrawn; version 3 starts in 10 seconds
    assert "第 3 版（" in page


def test_rule_publish_validates_through_the_api_schema(as_admin):
    response = as_admin.post(
        "/admin/rules/publish", {"activity": "sorting:paper", "co2e_g_per_unit": "abc", "source": "x"}
    )
    assert response.status_code == 422
    body = text(response)
    assert "减排量（克 CO₂e / 千克）" in body
    assert "依据来源" in body
    assert count(Rule, activity="sorting:paper") == 1


def test_the_publish_form_sent_as_it_came_publishes_nothing_and_says_why(as_admin):
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:paper"))
    form = dict(re.findall(r'<input (?:type="hidden" )?name="(\w+)"[^>]*value="([^"]*)"', page))
    form["source"] = html.unescape(re.search(r'<textarea name="source"[^>]*>([^<]*)</textarea>', page).group(1))
    response = as_admin.post("/admin/rules/publish", form)
    assert response.status_code == 422
    assert "与第 1 版完全相同，未发布：请修改要调整的数值或依据来源" in text(response)
    assert count(Rule, activity="sorting:paper") == 1


def test_publishing_an_unknown_rule_is_a_404_page(as_admin):
    assert as_admin.get("/admin/rules/publish?activity=nope:nothing").status_code == 404


# --- collection points ---------------------------------------------------------------------------------------------


def test_admin_creates_a_point_via_form(as_admin):
    response = as_admin.post(
        "/admin/points",
        {
            "name": "鑫海湾智能箱",
            "community_id": community_id("xinhaiwan"),
            "kind": "smart_bin",
            "address": "海湾路 8 号",
            "categories": ["paper", "plastic"],
        },
    )
    assert response.status_code == 302, text(response)
    point = db.session.scalar(sa.select(CollectionPoint).filter_by(name="鑫海湾智能箱"))
    assert sorted(point.categories) == ["paper", "plastic"]
    assert response.headers["Location"].endswith(f"/admin/points/{point.id}")


def test_worker_creates_points_only_in_own_community(as_worker):
    response = as_worker.post(
        "/admin/points",
        {"name": "恒康二号站", "community_id": community_id("xinhaiwan"), "kind": "station", "categories": ["glass"]},
    )
    assert response.status_code == 302, text(response)
    point = db.session.scalar(sa.select(CollectionPoint).filter_by(name="恒康二号站"))
    assert point.community_id == community_id("hengkang")


def test_point_form_errors_keep_the_typed_values(as_admin):
    response = as_admin.post(
        "/admin/points",
        {"name": "半截坐标站", "community_id": community_id("hengkang"), "kind": "station", "lat": "31.2"},
    )
    assert response.status_code == 422
    body = text(response)
    assert "回收品类：请至少选择一个回收品类" in body
    assert body.count("请至少选择一个回收品类") == 1  # the message is the field's sentence: said once, with its label
    assert 'value="半截坐标站"' in body
    response = as_admin.post(
        "/admin/points",
        {
            "name": "半截坐标站",
            "community_id": community_id("hengkang"),
            "kind": "station",
            "lat": "31.2",
            "categories": ["glass"],
        },
    )
    assert response.status_code == 422
    assert "纬度和经度必须同时提供" in text(response)
    assert db.session.scalar(sa.select(CollectionPoint).filter_by(name="半截坐标站")) is None


def test_poster_png_svg_and_rotation(as_admin):
    point = make_point()
    png = as_admin.get(f"/admin/points/{point.id}/qr.png")
    assert png.status_code == 200
    assert png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG\r\n\x1a\n")
    svg = as_admin.get(f"/admin/points/{point.id}/qr.svg")
    assert svg.mimetype == "image/svg+xml"
    assert "attachment" in svg.headers["Content-Disposition"]
    assert b"<svg" in svg.data
    before = sorting.poster(SYSTEM, point.id)["url"]
    assert before in text(as_admin.get(f"/admin/points/{point.id}"))
    assert as_admin.post(f"/admin/points/{point.id}/rotate", {}).status_code == 422  # the confirmation box
    assert sorting.poster(SYSTEM, point.id)["url"] == before
    response = as_admin.post(f"/admin/points/{point.id}/rotate", {"confirm": "yes"})
    assert response.status_code == 302
    after = sorting.poster(SYSTEM, point.id)["url"]
    assert after != before
    assert after in text(as_admin.get(f"/admin/points/{point.id}"))


def test_worker_cannot_see_another_communitys_poster(as_worker):
    point = make_point("鑫海湾站", "xinhaiwan")
    assert as_worker.get(f"/admin/points/{point.id}/qr.png").status_code == 403
    page = as_worker.get(f"/admin/points/{point.id}")
    assert page.status_code == 403
    assert "只能操作本社区的数据" in text(page)
    assert as_worker.post(f"/admin/points/{point.id}/rotate", {"confirm": "yes"}).status_code == 403


def test_device_registration_shows_the_secret_once(as_admin):
    point = make_point()
    response = as_admin.post(f"/admin/points/{point.id}/devices", {"code": "bin-hk-001"})
    assert response.status_code == 201
    device = db.session.scalar(sa.select(Device).filter_by(code="bin-hk-001"))
    assert device.secret in text(response)
    assert "只显示这一次" in text(response)
    later = text(as_admin.get(f"/admin/points/{point.id}"))
    assert "bin-hk-001" in later
    assert device.secret not in later
    duplicate = as_admin.post(f"/admin/points/{point.id}/devices", {"code": "bin-hk-001"})
    assert duplicate.status_code == 409
    assert "设备编号已存在" in text(duplicate)


def test_a_nul_character_in_a_form_or_query_is_refused_on_the_page(browser, as_worker):
    assert browser.post("/admin/login", {"username": "admin\x00", "password": "x"}).status_code == 422
    point = make_point()
    edit = {"form": "edit", "name": "恒康\x00站", "kind": "station", "categories": ["paper"]}
    response = as_worker.post(f"/admin/points/{point.id}", edit)
    assert response.status_code == 422
    assert "不能包含空字符或无效的 Unicode 字符" in text(response)
    assert as_worker.get("/admin/residents?cursor=%00").status_code == 422
    db.session.expire_all()
    assert db.session.get(CollectionPoint, point.id).name == "恒康一号站"


def test_a_refused_nul_keeps_the_signed_in_layout(as_worker):
    """As a server has it, each request in a fresh context (a thread of its own): the test's own app context would
    otherwise carry `g` over from the previous request and hide a page rendered before the sign-in is known."""
    point = make_point()
    edit = {"form": "edit", "name": "恒康\x00站", "kind": "station", "categories": ["paper"]}
    requests = [
        lambda: as_worker.post(f"/admin/points/{point.id}", edit),
        lambda: as_worker.get("/admin/staff?cursor=%00"),
    ]
    for send in requests:
        with ThreadPoolExecutor(max_workers=1) as pool:
            response = pool.submit(send).result()
        assert response.status_code == 422
        assert "返回首页" in text(response)
        assert "前往登录" not in text(response)
        assert 'href="/admin/points"' in text(response)  # the menu


def test_a_point_is_edited_from_its_page(as_worker):
    point = make_point()
    form = {"form": "edit", "name": "恒康一号站（新）", "kind": "recycling_service_point", "address": "恒康社区东门",
            "lat": "30.8705", "lng": "121.5852", "geofence_m": "150", "categories": ["paper", "glass"]}  # fmt: skip
    response = as_worker.post(f"/admin/points/{point.id}", form)
    assert response.status_code == 302
    # to the message at the top: the browser would keep the form's #fix
    assert response.headers["Location"] == f"/admin/points/{point.id}#top"
    assert '<main id="top">' in text(as_worker.get(response.headers["Location"]))
    db.session.expire_all()
    saved = db.session.get(CollectionPoint, point.id)
    assert (saved.name, saved.kind, saved.address) == ("恒康一号站（新）", "recycling_service_point", "恒康社区东门")
    assert (saved.lat, saved.lng, saved.geofence_m, saved.categories) == (30.8705, 121.5852, 150, ["paper", "glass"])
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    assert 'value="150"' in page
    # a blank geofence and position clear them
    cleared = {**form, "lat": "", "lng": "", "geofence_m": ""}
    assert as_worker.post(f"/admin/points/{point.id}", cleared).status_code == 302
    db.session.expire_all()
    saved = db.session.get(CollectionPoint, point.id)
    assert (saved.lat, saved.lng, saved.geofence_m) == (None, None, None)


def test_a_refused_point_edit_keeps_the_typed_values_and_changes_nothing(as_worker):
    point = make_point()
    typed = {"form": "edit", "name": "改过的名字", "kind": "station", "lat": "", "lng": "", "geofence_m": "200",
             "categories": ["paper"]}  # fmt: skip
    response = as_worker.post(f"/admin/points/{point.id}", typed)
    assert response.status_code == 422
    assert "设置电子围栏需要先提供回收点位置" in text(response)
    assert 'value="改过的名字"' in text(response)
    no_categories = as_worker.post(f"/admin/points/{point.id}", {**typed, "geofence_m": "", "categories": []})
    assert no_categories.status_code == 422
    half_a_position = as_worker.post(f"/admin/points/{point.id}", {**typed, "lat": "30.87", "geofence_m": "100"})
    assert half_a_position.status_code == 422
    assert "纬度和经度必须同时提供" in text(half_a_position)
    db.session.expire_all()
    assert db.session.get(CollectionPoint, point.id).name == "恒康一号站"
    theirs = make_point("鑫海湾站", "xinhaiwan")
    assert as_worker.post(f"/admin/points/{theirs.id}", {**typed, "geofence_m": ""}).status_code == 403
    db.session.expire_all()
    assert db.session.get(CollectionPoint, theirs.id).name == "鑫海湾站"


def test_a_point_is_retired_once_confirmed_and_brought_back(as_worker):
    point = make_point()
    refused = as_worker.post(f"/admin/points/{point.id}/active", {"active": "0"})
    assert refused.status_code == 422
    assert "请勾选确认" in text(refused)
    assert as_worker.post(f"/admin/points/{point.id}/active", {"active": "0", "confirm": "yes"}).status_code == 302
    db.session.expire_all()
    assert db.session.get(CollectionPoint, point.id).active is False
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    assert "重新启用回收点" in page
    assert "海报不能打卡" in page
    assert "下载 SVG" not in page
    assert as_worker.get(f"/admin/points/{point.id}/qr.png").status_code == 409
    # the list shows it under 已停用 only, where it can be found again
    assert f'/admin/points/{point.id}"' not in as_worker.get("/admin/points").get_data(as_text=True)
    assert f'/admin/points/{point.id}"' in as_worker.get("/admin/points?status=retired").get_data(as_text=True)
    assert as_worker.post(f"/admin/points/{point.id}/active", {"active": "1"}).status_code == 302
    assert "没有已停用的回收点" in text(as_worker.get("/admin/points?status=retired"))
    db.session.expire_all()
    assert db.session.get(CollectionPoint, point.id).active is True
    actions = db.session.scalars(
        sa.select(AuditEvent.action)
        .filter_by(target_type="collection_point", target_id=str(point.id))
        .order_by(AuditEvent.id)
    ).all()
    assert actions[-2:] == ["collection_point.deactivate", "collection_point.reactivate"]


@pytest.mark.parametrize("value", ["maybe", "", "true"])
def test_an_on_off_switch_with_another_value_is_refused_not_read_as_off(as_admin, value):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-009", "collection_point_id": point.id})
    for path in (f"/admin/points/{point.id}/devices/{device.id}/active", f"/admin/points/{point.id}/active"):
        response = as_admin.post(path, {"active": value, "confirm": "yes"})
        assert response.status_code == 422
        assert "取值无效" in text(response)
    db.session.expire_all()
    assert db.session.get(Device, device.id).active is True
    assert db.session.get(CollectionPoint, point.id).active is True


def test_a_refusal_about_a_field_the_page_has_no_input_for_never_shows_its_raw_name(as_admin):
    """Bringing back a bin of a retired point is refused on `active`, which is a button, not a field to fix."""
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-010", "collection_point_id": point.id})
    sorting.set_device_active(SYSTEM, device.id, False)
    sorting.set_point_active(SYSTEM, point.id, False)
    response = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/active", {"active": "1"})
    assert response.status_code == 422
    alert = re.search(r'<div class="alert error" role="alert"[^>]*>(.*?)</div>', text(response), re.S)[1]
    assert "该设备所在的回收点已停用" in alert
    assert "active" not in re.sub(r"<[^>]*>", "", alert)  # what is shown (an id may name it)


def test_a_points_page_says_what_the_caps_left_uncredited(api, as_admin):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    for weight in (12_000, 1000):  # 211 points against a cap of 200, then 18 with nothing left
        body = {"member_code": api.member_code(resident), "collection_point_id": point.id, "fit_to_caps": True,
                "items": [{"category": "paper", "weight_g": weight}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    assert '<td data-label="积分">200 <span class="muted">（超出每日上限，11 积分未计）</span></td>' in page
    assert '<td data-label="积分">0 <span class="muted">（超出每日上限，18 积分未计）</span></td>' in page
    assert "不足 1 积分" not in page


def test_a_points_page_lists_its_deposits_newest_first_in_pages(api, as_admin, monkeypatch):
    import admin.point_pages

    monkeypatch.setattr(admin.point_pages, "DEPOSITS_PER_PAGE", 2)
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    weights = (1000, 1500, 10)  # the last one is worth 0 points
    for weight in weights:
        body = {"member_code": api.member_code(resident), "collection_point_id": point.id,
                "items": [{"category": "glass" if weight == 10 else "paper", "weight_g": weight}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    assert page.index("玻璃 10 克") < page.index("废纸 1500 克")
    assert "（不足 1 积分）" in page
    assert f"回收员 {username_of(collector)}" in page  # by name, not by id
    assert "废纸 1000 克" not in page
    older = re.search(r'href="([^"]+cursor=[^"]+)">更早的记录', page).group(1).replace("&amp;", "&")
    rest = text(as_admin.get(older))
    assert "废纸 1000 克" in rest
    assert "玻璃 10 克" not in rest
    assert "更早的记录" not in rest
    assert f'href="/admin/points/{point.id}#deposits">« 最新记录</a>' in rest  # back to the first page, at the list
    assert "最新记录" not in page


def _check_in(api, resident, point: CollectionPoint) -> None:
    response = api.post("/scans", as_=resident, json={"token": sorting.poster(SYSTEM, point.id)["token"]})
    assert response.status_code == 201, response.get_json()


def test_a_residents_page_shows_what_was_weighed_where_and_by_whom_and_where_they_checked_in(
    api, as_worker, clock, monkeypatch
):
    """ "I got points twice", "the weight was wrong": the ledger's lines say only the points. The worker of the
    resident's community sees each deposit (at any community's point) and check-in, each list paging on its own."""
    import admin.ledger_pages

    monkeypatch.setattr(admin.ledger_pages, "ACTIVITY_PAGE_SIZE", 1)
    mine, theirs = make_point("恒康一号站"), make_point("鑫海湾一号站", "xinhaiwan")
    collector = api.staff("collector", collection_point_ids=[theirs.id], display_name="鑫海湾回收员老周")
    bin_ = sorting.register_device(SYSTEM, {"code": "bin-xh-001", "collection_point_id": theirs.id})
    resident = api.resident(community_code="hengkang")
    body = {"member_code": api.member_code(resident), "collection_point_id": theirs.id,
            "items": [{"category": "plastic", "weight_g": 12_500}, {"category": "glass", "weight_g": 150}]}  # fmt: skip
    first = api.post("/deposits", as_=collector, json=body).get_json()
    clock.advance(minutes=1)
    sorting.record_device_deposit(
        Actor(kind="device", id=bin_.id, role="device", collection_point_ids=frozenset({theirs.id})),
        {"member_code": api.member_code(resident), "collection_point_id": theirs.id, "fit_to_caps": False,
         "items": [{"category": "paper", "weight_g": 1000}]},
    )  # fmt: skip
    _check_in(api, resident, mine)
    clock.advance(days=1)
    _check_in(api, resident, theirs)
    page = text(as_worker.get(f"/admin/residents/{resident.id}"))
    assert "2027-12-31 到期" in page  # this year's points, spendable to the last day of next year
    deposits = page[page.index('<h2 id="deposits">') : page.index('<h2 id="checkins">')]
    assert "鑫海湾一号站" in deposits
    assert "废纸 1000 克" in deposits
    assert "智能回收箱 <code>bin-xh-001</code>" in deposits
    assert "塑料" not in deposits  # one a page, newest first
    checkins = page[page.index('<h2 id="checkins">') :]
    assert "鑫海湾一号站" in checkins
    assert "恒康一号站" not in checkins
    older = re.search(r'href="([^"]+deposits_cursor=[^"]+)">更早的投递', page).group(1).replace("&amp;", "&")
    assert "checkins_cursor" not in older
    more = text(as_worker.get(older))
    deposits = more[more.index('<h2 id="deposits">') : more.index('<h2 id="checkins">')]
    assert f"#{first['id']}" in deposits
    assert "塑料 12500 克、玻璃 150 克" in deposits
    assert "回收员 鑫海湾回收员老周" in deposits  # by the name it shows; its login, half of it, not to a worker
    assert username_of(collector) not in more
    assert "鑫海湾一号站" in more[more.index('<h2 id="checkins">') :]  # the other list kept its place
    later = re.search(r'href="([^"]+checkins_cursor=[^"]+)">更早的打卡', more).group(1).replace("&amp;", "&")
    assert "deposits_cursor=" in later  # paging check-ins keeps the deposits' page
    assert "恒康一号站" in text(as_worker.get(later)).split('<h2 id="checkins">')[1]


def test_an_admin_corrects_a_mistyped_weight_from_the_residents_page(api, as_admin):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident, other = api.resident(community_code="hengkang"), api.resident(community_code="hengkang")
    made = {who.id: weighed(api, collector, point.id, who, ("plastic", 12_500)) for who in (resident, other)}
    wrong = made[resident.id]
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    assert '<summary>更正品类或重量<span class="vh">' in page
    assert 'value="12500"' in page  # the form starts from what was recorded
    path = f"/admin/residents/{resident.id}/deposits/{wrong['id']}/correction"
    typed = {"category": ["plastic", "glass"], "weight_g": ["1250", "300"], "reason": "回收员多打了一个 0"}
    refused = as_admin.post(path, typed)  # no confirm tick
    assert refused.status_code == 422
    row = re.search(rf'<tr id="deposit-{wrong["id"]}">(.*?)</tr>', text(refused), re.S)[1]
    assert "请勾选确认" in row
    assert 'value="1250"' in row  # what was typed stays
    assert 'value="300"' in row
    kilograms = as_admin.post(path, {**typed, "weight_g": ["1.25", "300"], "confirm": "yes"})
    assert kilograms.status_code == 422
    assert "重量以克为单位" in re.search(rf'<tr id="deposit-{wrong["id"]}">(.*?)</tr>', text(kilograms), re.S)[1]
    assert count(DepositCorrection) == 0
    response = as_admin.post(path, {**typed, "confirm": "yes"})
    assert response.status_code == 302
    page = text(as_admin.get(response.headers["Location"]))
    assert "已更正第" in page
    assert "已更正为第" in page
    assert "塑料 1250 克、玻璃 300 克" in page
    assert ledger.profile(resident.id)["balance"] == 17 + 1  # 1712.5 g and 78 g: 17.905 → 18
    # sent again (a double click, another admin's tab): the row says why nothing happened
    again = as_admin.post(path, {**typed, "confirm": "yes"})
    assert again.status_code == 409
    assert "这笔投递已经更正过" in re.search(rf'<tr id="deposit-{wrong["id"]}">(.*?)</tr>', text(again), re.S)[1]
    # the day's weight on the dashboard counts the load as corrected, once
    assert dashboard_cards(as_admin)["今日回收"] == f"{(1250 + 300 + 12_500) / 1000:,.1f} kg"  # not the 12.5 replaced
    # over today's cap: refused, the way out offered on the form, and taken
    deposit_id = weighed(api, collector, point.id, resident, ("paper", 11_000))["id"]
    capped = f"/admin/residents/{resident.id}/deposits/{deposit_id}/correction"
    over = {"category": "paper", "weight_g": "12000", "reason": "称重核对", "confirm": "yes"}
    refused = as_admin.post(capped, over)
    assert refused.status_code == 409
    assert "超出今日上限时按上限记录" in re.search(rf'<tr id="deposit-{deposit_id}">(.*?)</tr>', text(refused), re.S)[1]
    assert as_admin.post(capped, {**over, "fit_to_caps": "true"}).status_code == 302
    assert count(DepositCorrection) == 2
    # another resident's deposit is not this page's to correct, nor an id no deposit can have
    elsewhere = f"/admin/residents/{resident.id}/deposits/{made[other.id]['id']}/correction"
    assert as_admin.post(elsewhere, {**typed, "confirm": "yes"}).status_code == 404
    beyond = f"/admin/residents/{resident.id}/deposits/{2**63}/correction"
    assert as_admin.post(beyond, {**typed, "confirm": "yes"}).status_code == 404
    assert count(DepositCorrection) == 2


def test_a_worker_sees_no_correction_form_and_cannot_post_one(api, as_worker):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    deposit = weighed(api, collector, point.id, resident, ("paper", 1000))
    assert "更正品类或重量" not in text(as_worker.get(f"/admin/residents/{resident.id}"))
    path = f"/admin/residents/{resident.id}/deposits/{deposit['id']}/correction"
    response = as_worker.post(path, {"category": "paper", "weight_g": "100", "reason": "试试", "confirm": "yes"})
    assert response.status_code == 403
    assert count(DepositCorrection) == 0


def test_a_workers_point_page_shows_who_checked_in_newest_first_in_pages(api, as_worker, clock, monkeypatch):
    """Who came and when, for the worker who may have to rotate a poster shared beyond the point; residents of other
    communities are named by number only, as under deposits."""
    import admin.point_pages

    monkeypatch.setattr(admin.point_pages, "CHECKINS_PER_PAGE", 2)
    point, other_point = make_point(), make_point("恒康二号站")
    first, second, elsewhere = api.resident(community_code="hengkang"), api.resident(), api.resident()
    assert api.patch("/me", as_=first, json={"nickname": "早起的张阿姨"}).status_code == 200
    for resident in (first, second):
        _check_in(api, resident, point)
        clock.advance(minutes=10)
    _check_in(api, elsewhere, other_point)
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    listed = page[page.index("打卡记录") :]
    assert f'<span class="muted">#{second.id}（未选择社区，请经发办查询）</span>' in listed
    assert f'href="/admin/residents/{first.id}">早起的张阿姨</a>' in listed
    assert listed.index(f"#{second.id}") < listed.index(f"#{first.id}")  # newest first
    assert f"#{elsewhere.id}" not in listed
    assert "更早的打卡" not in listed

    _check_in(api, elsewhere, point)
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    listed = page[page.index("打卡记录") :]
    assert f"#{first.id}" not in listed
    older = re.search(r'href="([^"]+checkins_cursor=[^"]+)">更早的打卡', listed).group(1).replace("&amp;", "&")
    rest = text(as_worker.get(older))
    rest = rest[rest.index("打卡记录") :]
    assert f'href="/admin/residents/{first.id}">早起的张阿姨</a>' in rest
    assert f"#{elsewhere.id}" not in rest
    assert f'href="/admin/points/{point.id}#checkins">« 最新打卡</a>' in rest
    # paging one list keeps the other where it was
    checkins_cursor, deposits_cursor = older.split("checkins_cursor=")[1].split("#")[0], encode_cursor(10**6)
    both = text(as_worker.get(f"{older.split('#')[0]}&cursor={deposits_cursor}"))
    assert f'cursor={deposits_cursor}#checkins">« 最新打卡</a>' in both
    assert f'checkins_cursor={checkins_cursor}#deposits">« 最新记录</a>' in both


def test_a_points_check_ins_are_shown_for_one_local_day(api, as_admin, clock):
    point = make_point()
    early, late = api.resident(), api.resident()
    _check_in(api, early, point)
    clock.advance(days=1)
    _check_in(api, late, point)
    day = text(as_admin.get(f"/admin/points/{point.id}?day=2026-06-15"))  # the clock starts at 10:00 on 15 June
    day = day[day.index("打卡记录") :]
    assert f'href="/admin/residents/{early.id}"' in day
    assert f'href="/admin/residents/{late.id}"' not in day


def test_another_communitys_point_shows_its_check_ins_to_no_worker(api, as_worker):
    point = make_point("鑫海湾一号站", "xinhaiwan")
    _check_in(api, api.resident(), point)
    page = as_worker.get(f"/admin/points/{point.id}")
    assert page.status_code == 403
    assert "打卡记录" not in text(page)
    worker = Actor(kind="staff", id=1, role="worker", community_id=community_id("hengkang"))
    with pytest.raises(Forbidden):  # the list refuses on its own, whatever the page reads before it
        sorting.point_checkins(worker, point.id, None, None, 20)


def test_a_points_page_marks_a_reversed_deposit(api, as_admin):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    body = {"member_code": api.member_code(api.resident()), "collection_point_id": point.id,
            "items": [{"category": "paper", "weight_g": 1000}]}  # fmt: skip
    made = api.post("/deposits", as_=collector, json=body).get_json()
    assert "（已冲正）" not in text(as_admin.get(f"/admin/points/{point.id}"))
    ledger.reverse_entry(SYSTEM, made["entry_id"], "称重错误")
    assert "（已冲正）" in text(as_admin.get(f"/admin/points/{point.id}"))


def test_a_workers_point_page_links_only_to_residents_it_may_open(api, as_worker):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    mine, elsewhere = api.resident(community_code="hengkang"), api.resident()  # the second never set a community
    neighbour = api.resident(community_code="xinhaiwan")
    assert api.patch("/me", as_=mine, json={"nickname": "楼下王阿姨"}).status_code == 200
    assert api.patch("/me", as_=elsewhere, json={"nickname": "外区老李"}).status_code == 200
    for resident in (mine, elsewhere, neighbour):
        body = {"member_code": api.member_code(resident), "collection_point_id": point.id,
                "items": [{"category": "paper", "weight_g": 1000}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
    page = as_worker.get(f"/admin/points/{point.id}").get_data(as_text=True)
    assert f'href="/admin/residents/{mine.id}">楼下王阿姨</a> <span class="muted">#{mine.id}</span>' in page
    assert "外区老李" not in page  # a nickname the worker may not look up is not shown either
    assert f'href="/admin/residents/{elsewhere.id}"' not in page
    # not 居民 42, like a nickname; one who chose no community is no other office's either
    assert f'<span class="muted">#{elsewhere.id}（未选择社区，请经发办查询）</span>' in page
    assert f'<span class="muted">#{neighbour.id}（非本社区居民）</span>' in page
    assert as_worker.get(f"/admin/residents/{elsewhere.id}").status_code == 404


def test_a_bin_is_retired_and_brought_back_from_its_points_page(as_admin):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-002", "collection_point_id": point.id})
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    assert f"/admin/points/{point.id}/devices/{device.id}/active" in page
    unconfirmed = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/active", {"active": "0"})
    assert unconfirmed.status_code == 422  # one click is not enough to cut a bin off, as with a point
    assert "请勾选确认：停用后该设备的投递请求将立即被拒绝" in text(unconfirmed)
    db.session.expire_all()
    assert db.session.get(Device, device.id).active is True
    response = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/active", {"active": "0", "confirm": "yes"})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Device, device.id).active is False
    assert "已停用" in text(as_admin.get(f"/admin/points/{point.id}"))
    assert as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/active", {"active": "1"}).status_code == 302
    db.session.expire_all()
    assert db.session.get(Device, device.id).active is True


def test_a_retired_points_bins_are_not_shown_as_in_use(as_admin):
    """Their deposits are refused while the point is retired, whatever the bin's own switch says."""
    point = make_point()
    sorting.register_device(SYSTEM, {"code": "bin-hk-004", "collection_point_id": point.id})
    assert '<span class="tag ok">在用</span>' in text(as_admin.get(f"/admin/points/{point.id}"))
    sorting.set_point_active(SYSTEM, point.id, False)
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    assert '<span class="tag ok">在用</span>' not in page
    assert '回收点已停用</span> <span class="muted">投递暂被拒绝，回收点重新启用后恢复' in page


def test_a_worker_is_not_offered_to_bring_back_a_bin_an_admin_retired(api, as_worker):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-005", "collection_point_id": point.id})
    mine = sorting.register_device(SYSTEM, {"code": "bin-hk-006", "collection_point_id": point.id})
    sorting.set_device_active(SYSTEM, device.id, False)  # SYSTEM acts as an admin
    worker = Actor(kind="staff", id=2, role="worker", community_id=community_id("hengkang"))
    sorting.set_device_active(worker, mine.id, False)
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    assert page.count("由平台管理员停用，请联系经发办重新启用") == 1
    assert f"/admin/points/{point.id}/devices/{device.id}/active" not in page
    assert f"/admin/points/{point.id}/devices/{mine.id}/active" in page  # the worker's own retirement it may undo
    response = as_worker.post(f"/admin/points/{point.id}/devices/{device.id}/active", {"active": "1"})
    assert response.status_code == 403  # a stale page is refused all the same
    assert "由平台管理员停用" in text(response)


def test_a_bins_secret_is_rotated_once_confirmed_and_shown_once(as_admin):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-003", "collection_point_id": point.id})
    old = device.secret
    refused = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/rotate", {})
    assert refused.status_code == 422
    assert "请勾选确认" in text(refused)
    db.session.expire_all()
    assert db.session.get(Device, device.id).secret == old
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    replaces = re.search(r'name="replaces" value="([0-9a-f]+)"', page).group(1)
    assert old not in page
    form = {"confirm": "yes", "replaces": replaces}
    response = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/rotate", form)
    assert response.status_code == 200
    db.session.expire_all()
    new = db.session.get(Device, device.id).secret
    assert new != old
    assert new in text(response)
    assert "旧密钥已经失效" in text(response)
    assert new not in text(as_admin.get(f"/admin/points/{point.id}"))
    # reloading the answer sends the same form again: refused, and the secret just shown still stands
    reloaded = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/rotate", form)
    assert reloaded.status_code == 409
    assert "请刷新页面" in text(reloaded)
    assert new not in text(reloaded)
    db.session.expire_all()
    assert db.session.get(Device, device.id).secret == new
    # a tampered fingerprint outside ASCII is the same stale form, not a 500
    garbled = as_admin.post(f"/admin/points/{point.id}/devices/{device.id}/rotate", form | {"replaces": "指纹"})
    assert garbled.status_code == 409
    db.session.expire_all()
    assert db.session.get(Device, device.id).secret == new


def test_admin_only_forms_refuse_a_worker_before_reading_the_form(as_worker):
    """A worker gets 403 whatever the form says; a bad form must not answer 422, as if it could have passed."""
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-006", "collection_point_id": point.id})
    resident = db.session.scalar(sa.select(Resident.id).limit(1)) or 1
    bad = {"code": "", "name": "", "kind": "nope", "delta": "x", "reason": "", "co2e_g_per_unit": "x"}
    for path in (
        "/admin/communities",
        "/admin/organizations",
        "/admin/rules/publish",
        f"/admin/residents/{resident}/adjustments",
        f"/admin/points/{point.id}/devices",
        f"/admin/points/{point.id}/devices/{device.id}/rotate",
    ):
        assert as_worker.post(path, bad).status_code == 403, path


def test_a_worker_retires_its_bins_but_neither_registers_nor_rekeys_them(as_worker):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-hk-005", "collection_point_id": point.id})
    secret = device.secret
    page = text(as_worker.get(f"/admin/points/{point.id}"))
    assert f"/admin/points/{point.id}/devices/{device.id}/active" in page
    assert f"/admin/points/{point.id}/devices/{device.id}/rotate" not in page
    assert f'action="/admin/points/{point.id}/devices"' not in page
    assert "请联系经发办管理员" in page
    assert as_worker.post(f"/admin/points/{point.id}/devices", {"code": "bin-hk-own"}).status_code == 403
    form = {"confirm": "yes", "replaces": device.secret_fingerprint}
    refused = as_worker.post(f"/admin/points/{point.id}/devices/{device.id}/rotate", form)
    assert refused.status_code == 403
    assert secret not in text(refused)
    db.session.expire_all()
    assert count(Device) == 1
    assert db.session.get(Device, device.id).secret == secret


def test_bins_are_managed_only_under_their_own_point_and_community(as_worker):
    mine, theirs = make_point(), make_point("鑫海湾站", "xinhaiwan")
    my_bin = sorting.register_device(SYSTEM, {"code": "bin-hk-004", "collection_point_id": mine.id})
    their_bin = sorting.register_device(SYSTEM, {"code": "bin-xhw-001", "collection_point_id": theirs.id})
    secret = their_bin.secret
    assert (
        as_worker.post(
            f"/admin/points/{theirs.id}/devices/{their_bin.id}/active", {"active": "0", "confirm": "yes"}
        ).status_code
        == 403
    )
    form = {"confirm": "yes", "replaces": their_bin.secret_fingerprint}
    rotate = as_worker.post(f"/admin/points/{theirs.id}/devices/{their_bin.id}/rotate", form)
    assert rotate.status_code == 403
    # a bin named under another point's URL is not found there, even the worker's own point
    assert (
        as_worker.post(
            f"/admin/points/{mine.id}/devices/{their_bin.id}/active", {"active": "0", "confirm": "yes"}
        ).status_code
        == 404
    )
    assert (
        as_worker.post(
            f"/admin/points/{theirs.id}/devices/{my_bin.id}/active", {"active": "0", "confirm": "yes"}
        ).status_code
        == 404
    )
    db.session.expire_all()
    assert db.session.get(Device, their_bin.id).active is True
    assert db.session.get(Device, their_bin.id).secret == secret
    assert db.session.get(Device, my_bin.id).active is True


# --- ledger verification ---------------------------------------------------------------------------------------


def test_verify_page_shows_ok(api, as_admin):
    resident = api.resident(community_code="hengkang")
    ledger.adjust(SYSTEM, resident.id, 12, "测试")
    assert "校验通过" not in text(as_admin.get("/admin/verify"))
    response = as_admin.post("/admin/verify")
    assert (response.status_code, response.headers["Location"]) == (303, "/admin/verify")  # a refresh reads nothing
    body = text(as_admin.get("/admin/verify"))
    assert "校验通过" in body
    assert "1 条记录" in body


def test_verify_page_shows_the_last_kept_check_without_running_one(api, app, as_admin, admin, clock):
    resident = api.resident(community_code="hengkang")
    ledger.adjust(SYSTEM, resident.id, 12, "测试")
    assert "尚无校验记录" in text(as_admin.get("/admin/verify"))
    assert app.test_cli_runner().invoke(args=["ledger", "verify"]).exit_code == 0  # the nightly job
    clock.advance(hours=2)
    page = text(as_admin.get("/admin/verify"))
    assert "上次校验：2026-06-15 10:00（命令行或定时任务）" in page
    assert "校验通过" in page
    assert "共校验 1 个账户、1 条记录" in page
    as_admin.post("/admin/verify")
    page = text(as_admin.get("/admin/verify"))
    shown_as = db.session.get(Staff, admin.id).display_name or username_of(admin)
    assert f"上次校验：2026-06-15 12:00（{shown_as} 在管理后台）" in page


def test_a_verification_the_page_cannot_keep_is_shown_all_the_same(api, as_admin, monkeypatch):
    import app.ledger.verify as verify

    def refused() -> None:
        raise sa.exc.OperationalError("INSERT INTO ledger_checks", {}, Exception("read-only transaction"))

    ledger.adjust(SYSTEM, api.resident(community_code="hengkang").id, 12, "测试")
    monkeypatch.setattr(verify, "commit", refused)
    response = as_admin.post("/admin/verify")
    assert response.status_code == 200
    body = text(response)
    assert "本次校验的结果未能保存，仅在此显示" in body
    assert "校验通过" in body


def test_a_ledger_too_large_to_check_within_a_request_is_sent_to_the_cli_not_to_a_502(api, as_admin, monkeypatch):
    """At a year's volume a check outlasts gunicorn's timeout: the worker would be killed and nothing kept."""
    import admin.ledger_pages
    from app.ledger.models import LedgerCheck

    resident = api.resident(community_code="hengkang")
    ledger.adjust(SYSTEM, resident.id, 12, "测试")
    ledger.adjust(SYSTEM, resident.id, 3, "测试")
    monkeypatch.setattr(admin.ledger_pages, "WEB_VERIFY_MAX_ENTRIES", 1)
    response = as_admin.post("/admin/verify")
    assert response.status_code == 303
    said = "账本共有 2 条记录，在网页中校验会超时：请由运维执行 flask ledger verify"
    assert said in text(as_admin.get("/admin/verify"))
    assert count(LedgerCheck) == 0
    monkeypatch.setattr(admin.ledger_pages, "WEB_VERIFY_MAX_ENTRIES", 2)
    assert as_admin.post("/admin/verify").status_code == 303
    assert count(LedgerCheck) == 1


def test_verify_page_passes_with_its_notices_apart(api, as_admin, monkeypatch):
    for _ in range(3):
        ledger.adjust(SYSTEM, api.resident(community_code="hengkang").id, 12, "测试")
    db.session.execute(sa.update(Account).values(last_entry_at=None))  # as a server on an older release leaves it
    db.session.commit()
    monkeypatch.setattr(ledger_pages, "SHOWN_PROBLEMS", 2)
    body = text(as_admin.post("/admin/verify", follow_redirects=True))
    assert "校验通过" in body
    assert "提示（不影响校验结果）" in body
    assert body.count("a server on an older release posted it") == 2
    assert "共 3 条，仅显示前 2 条" in body


def test_verify_page_names_the_first_bad_entry(api, as_admin):
    resident = api.resident(community_code="hengkang")
    entry = ledger.adjust(SYSTEM, resident.id, 12, "测试")
    without_append_only_guard("UPDATE ledger_entries SET memo = 'tampered' WHERE id = :id", params={"id": entry.id})
    db.session.commit()
    body = text(as_admin.post("/admin/verify", follow_redirects=True))
    assert "发现问题" in body
    assert f"第一条异常记录 ID：<strong>{entry.id}</strong>" in body


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("get", "/admin/points/99999999999", None),
        ("get", "/admin/points/99999999999/qr.png", None),
        ("post", "/admin/points/99999999999/rotate", {"confirm": "yes"}),
        ("get", "/admin/residents/99999999999", None),
        ("post", "/admin/residents/99999999999/status", {"status": "frozen", "reason": "异常刷分"}),
    ],
)
def test_ids_beyond_the_database_are_the_sites_own_404(as_admin, method, path, data):
    """On PostgreSQL such an id would overflow INTEGER: the page says it is not there, in HTML."""
    response = as_admin.get(path) if method == "get" else as_admin.post(path, data)
    assert response.status_code == 404
    assert response.mimetype == "text/html"


@pytest.mark.parametrize("path", ["/admin/residents", "/admin/points", "/admin/staff"])
@pytest.mark.parametrize("query", ["community_id=99999999999", "cursor=OTk5OTk5OTk5OTk", "cursor=dHJ1ZQ"])
def test_list_filters_and_cursors_beyond_the_database_are_not_a_500(as_admin, path, query):
    """An id filter too big for the database is no filter; a cursor that is not a valid key is refused."""
    response = as_admin.get(f"{path}?{query}")
    assert response.status_code == (200 if query.startswith("community_id") else 422)
    assert response.mimetype == "text/html"


def test_a_printable_poster_names_its_point_and_is_scoped(api, as_worker):
    point = sorting.create_point(
        SYSTEM,
        {"name": "恒康社区3号楼投放点", "community_id": community_id("hengkang"), "kind": "station",
         "lat": 30.87, "lng": 121.58, "geofence_m": 200, "categories": ["paper", "glass"]},
    )  # fmt: skip
    assert f"/admin/points/{point.id}/poster" in text(as_worker.get(f"/admin/points/{point.id}"))
    page = text(as_worker.get(f"/admin/points/{point.id}/poster"))
    expected = ["恒康社区3号楼投放点", "定时定点投放站", "200 米内", "废纸", "玻璃", f"回收点编号 {point.id}"]
    for shown in [*expected, f'src="/admin/points/{point.id}/qr.svg"']:
        assert shown in page, shown
    # the way the poster says to scan it is the way that works: WeChat's own scanner lands on a page, not a check-in
    assert "小程序，点「扫码打卡」扫描此码" in page
    assert "微信扫一扫" not in page
    assert "GCJ-02" in text(as_worker.get(f"/admin/points/{point.id}"))  # positions a fence can compare
    theirs = make_point("鑫海湾站", "xinhaiwan")
    assert as_worker.get(f"/admin/points/{theirs.id}/poster").status_code == 403
    sorting.set_point_active(SYSTEM, point.id, False)
    assert as_worker.get(f"/admin/points/{point.id}/poster").status_code == 409  # a retired point's poster would fail


@pytest.mark.parametrize(("length", "long"), [(40, False), (41, True), (128, True)])
def test_a_posters_long_name_is_set_smaller_so_the_poster_stays_one_page(as_admin, length, long):
    """Checked by printing to PDF in Chromium: at the longest name and address a point may have, the poster is one
    A4 page, its QR (60 mm, not 120) still decoding. The print layout gives the QR's height up to the text."""
    point = make_point("恒" * length)
    page = text(as_admin.get(f"/admin/points/{point.id}/poster"))
    assert ('<p class="name long">' in page) is long
    assert "height: 273mm" in page
    assert "min-height: 60mm" in page


def test_a_point_edited_without_categories_is_told_as_when_created(as_admin):
    point = make_point()
    form = {"name": point.name, "kind": "station", "address": "", "lat": "", "lng": "", "geofence_m": ""}
    response = as_admin.post(f"/admin/points/{point.id}", form)
    assert response.status_code == 422
    assert "回收品类：请至少选择一个回收品类" in text(response)
    bad_code = as_admin.post(f"/admin/points/{point.id}/devices", {"code": "箱 1"})
    assert "只能包含英文字母、数字和 _ . -" in text(bad_code)


def test_a_workers_dashboard_counts_today_at_its_own_points_whoever_comes(api, as_worker, clock):
    """Residents of another community who bring recyclables to this community's points count for its points."""
    mine, theirs = make_point("恒康站"), make_point("鑫海湾站", "xinhaiwan")
    collector = api.staff("collector", collection_point_ids=[mine.id])
    visitor = api.resident(community_code="xinhaiwan")
    for point, weight in ((mine, 1500), (mine, 500)):
        body = {"member_code": api.member_code(visitor), "collection_point_id": point.id,
                "items": [{"category": "paper", "weight_g": weight}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
    for point in (mine, theirs):
        token = sorting.poster(SYSTEM, point.id)["token"]
        assert api.post("/scans", as_=visitor, json={"token": token}).status_code == 201

    assert (dashboard_cards(as_worker)["今日打卡"], dashboard_cards(as_worker)["今日回收"]) == ("1", "2.0 kg")
    clock.advance(days=1)  # a new local day starts from nothing
    assert (dashboard_cards(as_worker)["今日打卡"], dashboard_cards(as_worker)["今日回收"]) == ("0", "0.0 kg")


def test_an_admin_reverses_a_residents_entry_from_its_page_once_and_with_a_reason(api, admin, as_admin):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    made = weighed(api, collector, point.id, resident, ("paper", 1000))
    path = f"/admin/residents/{resident.id}/entries/{made['entry_id']}/reverse"
    assert path in text(as_admin.get(f"/admin/residents/{resident.id}"))

    unconfirmed = as_admin.post(path, {"reason": "称重错误"})
    assert unconfirmed.status_code == 422
    assert "请勾选确认" in text(unconfirmed)
    assert 'value="称重错误"' in text(unconfirmed)  # kept on the row that failed
    assert balance_of(resident.id) == made["points"]

    response = as_admin.post(path, {"reason": "称重错误", "confirm": "yes"})
    assert response.status_code == 302
    assert balance_of(resident.id) == 0
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    assert f"已冲正 -{made['points']} 积分，当前余额 0" in page
    assert path not in page  # marked 已冲正, no second form
    again = as_admin.post(path, {"reason": "再冲一次", "confirm": "yes"})
    assert again.status_code == 409
    assert "该记录已被冲正" in text(again)
    assert balance_of(resident.id) == 0

    # an entry is reversed only under its own resident's page
    other = api.resident(community_code="hengkang")
    stranger = as_admin.post(f"/admin/residents/{other.id}/entries/{made['entry_id']}/reverse",
                             {"reason": "错页", "confirm": "yes"})  # fmt: skip
    assert stranger.status_code == 404
    assert "积分记录不存在" in text(stranger)  # said above the rows, since the entry is not among them


def test_only_admins_reverse_entries_on_the_admin_site(api, as_worker):
    resident = api.resident(community_code="hengkang")
    entry = ledger.adjust(SYSTEM, resident.id, 20, "补发")
    assert "/reverse" not in text(as_worker.get(f"/admin/residents/{resident.id}"))
    path = f"/admin/residents/{resident.id}/entries/{entry.id}/reverse"
    assert as_worker.post(path, {"reason": "越权", "confirm": "yes"}).status_code == 403
    assert balance_of(resident.id) == 20


def test_a_points_deposits_are_shown_for_one_local_day(api, as_admin, clock):
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    for weight in (1000, 2000):  # 10:00 on 15 June, then 10:00 on 16 June (Shanghai)
        body = {"member_code": api.member_code(resident), "collection_point_id": point.id,
                "items": [{"category": "paper", "weight_g": weight}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
        clock.advance(days=1)
    day = text(as_admin.get(f"/admin/points/{point.id}?day=2026-06-15"))
    assert "废纸 1000 克" in day
    assert "废纸 2000 克" not in day
    assert 'value="2026-06-15"' in day
    every = text(as_admin.get(f"/admin/points/{point.id}?day=not-a-day"))  # no filter, not an error
    assert "废纸 1000 克" in every
    assert "废纸 2000 克" in every


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "2026-02-30"])
def test_a_day_the_filter_cannot_take_is_no_filter_not_a_500(as_admin, day):
    point = make_point()
    assert as_admin.get(f"/admin/points/{point.id}?day={day}").status_code == 200


# --- scope: what the other roles on the admin site may not reach --------------------------------------------------


def test_an_alliance_member_of_a_community_manages_none_of_its_points(api, browser):
    """An alliance account may carry its organisation's community, as a worker does; it still manages no point
    there: the points pages and their forms are for admins and that community's workers."""
    point = make_point()
    bin_ = sorting.register_device(SYSTEM, {"code": "bin-hk-ally", "collection_point_id": point.id})
    secret, poster = db.session.get(CollectionPoint, point.id).qr_secret, bin_.secret
    cafe = db.session.scalar(sa.select(Organization.id).filter_by(name="科学咖啡社"))
    member = api.staff("alliance", organization_id=cafe, community_id=community_id("hengkang"))
    assert browser.login(username_of(member)).status_code == 302
    for path in ("/admin/points", f"/admin/points/{point.id}", f"/admin/points/{point.id}/poster"):
        response = browser.get(path)
        assert response.status_code == 403, path
        assert point.name not in text(response), path
    assert browser.get(f"/admin/points/{point.id}/qr.png").status_code == 403
    hengkang = str(community_id("hengkang"))
    forms = [
        (f"/admin/points/{point.id}", {"name": "联盟改名", "kind": "station", "categories": ["paper"]}),
        (f"/admin/points/{point.id}/active", {"active": "0", "confirm": "yes"}),
        (f"/admin/points/{point.id}/rotate", {"confirm": "yes"}),
        (f"/admin/points/{point.id}/devices/{bin_.id}/active", {"active": "0", "confirm": "yes"}),
        ("/admin/points", {"name": "联盟的站", "kind": "station", "categories": ["paper"], "community_id": hengkang}),
    ]
    for path, form in forms:
        assert browser.post(path, form).status_code == 403, path
    db.session.expire_all()
    unchanged = db.session.get(CollectionPoint, point.id)
    assert (unchanged.name, unchanged.active, unchanged.qr_secret) == (point.name, True, secret)
    assert (db.session.get(Device, bin_.id).active, db.session.get(Device, bin_.id).secret) == (True, poster)
    assert count(CollectionPoint) == 1
    assert count(AuditEvent, actor_id=member.id) == 0


def test_an_alliance_member_is_refused_a_new_point_before_its_form_is_read(api, browser):
    cafe = db.session.scalar(sa.select(Organization.id).filter_by(name="科学咖啡社"))
    member = api.staff("alliance", organization_id=cafe, community_id=community_id("hengkang"))
    browser.login(username_of(member))
    for form in ({"name": "", "kind": "nonsense"}, {"name": "联盟的站", "kind": "station", "lat": "91"}):
        response = browser.post("/admin/points", form)
        assert response.status_code == 403, form
        assert "没有权限" in text(response)
    assert count(CollectionPoint) == 0


def test_a_workers_points_list_is_its_own_communitys_whatever_the_query(as_worker):
    mine, theirs = make_point("恒康站"), make_point("鑫海湾站", "xinhaiwan")
    for query in ("", f"?community_id={community_id('xinhaiwan')}", "?status=retired"):
        body = text(as_worker.get(f"/admin/points{query}"))
        assert f"/admin/points/{theirs.id}" not in body, query
        assert theirs.name not in body, query
    assert f"/admin/points/{mine.id}" in text(as_worker.get(f"/admin/points?community_id={community_id('xinhaiwan')}"))


def test_a_workers_dashboard_leaves_out_other_communities_deposits_and_accounts(api, as_worker):
    """Today's deposits at another community's points, and its residents' entries, points and CO2e, are not on a
    worker's dashboard."""
    mine, theirs = make_point("恒康站"), make_point("鑫海湾站", "xinhaiwan")
    neighbour, stranger = api.resident(community_code="hengkang"), api.resident(community_code="xinhaiwan")
    for point, resident, weight in ((mine, neighbour, 1000), (theirs, stranger, 3000), (theirs, stranger, 2000)):
        collector = api.staff("collector", collection_point_ids=[point.id])
        body = {"member_code": api.member_code(resident), "collection_point_id": point.id,
                "items": [{"category": "paper", "weight_g": weight}]}  # fmt: skip
        assert api.post("/deposits", as_=collector, json=body).status_code == 201
    ledger.adjust(SYSTEM, stranger.id, 500, "补发积分")
    own = api.get("/me", as_=neighbour).get_json()
    assert own["balance"] > 0
    cards = dashboard_cards(as_worker)
    assert cards["今日回收"] == "1.0 kg"
    assert cards["积分记录"] == "1"
    assert cards["累计活动积分"] == str(own["lifetime_earned"])
    assert cards["累计减排"] == f"{own['co2e_g'] / 1000:,.1f} kg"
    page = text(as_worker.get("/admin/"))
    assert "今天 1 笔投递" in page
    assert f"当前余额合计 {own['balance']}" in page


def test_an_alliance_members_dashboard_and_staff_form_show_only_its_own_organisation(api, browser):
    cafe, shops = (
        db.session.scalar(sa.select(Organization.id).filter_by(name=n)) for n in ("科学咖啡社", "鑫海湾沿街商铺联合会")
    )
    cafe_store, shops_store = (
        Store(name="咖啡社兑换点", organization_id=cafe),
        Store(name="沿街兑换点", organization_id=shops),
    )
    db.session.add_all([cafe_store, shops_store])
    db.session.commit()
    mine = api.staff("alliance", organization_id=cafe)
    api.staff("merchant", organization_id=cafe, store_ids=[cafe_store.id])
    api.staff("merchant", organization_id=shops, store_ids=[shops_store.id])
    api.staff("alliance", organization_id=shops)
    api.staff("worker", community_id=community_id("hengkang"))
    browser.login(username_of(mine))
    assert dashboard_cards(browser)["本单位工作人员"] == "2"
    page = text(browser.get("/admin/staff"))
    assert f'name="store_ids" value="{cafe_store.id}"' in page
    assert f'name="store_ids" value="{shops_store.id}"' not in page
    assert "沿街兑换点" not in page


# --- what browsers check before a form is sent -----------------------------------------------------------------

_V_MODE_SYNTAX = set("()[]{}/-\\|")  # literal in a character class only when escaped, under the `v` flag
_V_MODE_DOUBLES = ("&&", "!!", "##", "$$", "%%", "**", "++", ",,", "..", "::", ";;", "<<", "==", ">>", "??", "@@",
                   "^^", "``", "~~")  # fmt: skip


def _v_mode_problems(pattern: str) -> list[str]:
    """Why a browser would throw the pattern away: an input's pattern compiles with the `v` flag, where a character
    class takes a literal - ( ) [ ] { } / | only escaped, and no doubled punctuator."""
    problems, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] != "[":
            i += 1
            continue
        end, members = i + 1, []
        while end < len(pattern) and pattern[end] != "]":
            step = 2 if pattern[end] == "\\" else 1
            members.append(pattern[end : end + step])
            end += step
        body = "".join(members)
        for at, member in enumerate(members):
            ranged = member == "-" and 0 < at < len(members) - 1 and len(members[at - 1]) == len(members[at + 1]) == 1
            if member in _V_MODE_SYNTAX and not ranged:
                problems.append(f"unescaped {member!r} in [{body}]")
        problems += [f"{double!r} in [{body}]" for double in _V_MODE_DOUBLES if double in body]
        i = end + 1
    return problems


def test_the_v_mode_check_itself():
    assert _v_mode_problems("[A-Za-z0-9_.\\-]+") == []
    assert _v_mode_problems("[A-Za-z0-9_.-]+") == ["unescaped '-' in [A-Za-z0-9_.-]"]
    assert _v_mode_problems("[a|b]") == ["unescaped '|' in [a|b]"]
    assert _v_mode_problems("(a|b)[x]") == []


def test_every_input_pattern_is_one_browsers_accept():
    """Chrome compiles a pattern attribute with the `v` flag and ignores one that does not compile, so the field
    would go unchecked until the server said 格式不正确."""
    templates = sorted((ROOT / "admin" / "templates").rglob("*.html"))
    patterns = [(path.name, p) for path in templates for p in re.findall(r'pattern="([^"]*)"', path.read_text())]
    assert len(patterns) >= 3
    assert [(name, p, _v_mode_problems(p)) for name, p in patterns if _v_mode_problems(p)] == []
    inputs = [tag for path in templates for tag in re.findall(r"<input[^>]*pattern=[^>]*>", path.read_text())]
    assert all('title="' in tag for tag in inputs)  # the browser's refusal then says which characters it takes


@pytest.mark.parametrize(
    ("path", "form", "shown"),
    [
        ("/admin/staff", {"username": "张三丰", "password": "a-long-password", "role": "admin"},
         "用户名：只能包含英文字母、数字和 _ . @ -"),
        ("/admin/communities", {"code": "中文编号", "name": "测试社区"}, "编码：只能包含英文字母、数字和 _ -"),
    ],
)  # fmt: skip
def test_a_code_in_the_wrong_characters_says_which_are_allowed(as_admin, path, form, shown):
    response = as_admin.post(path, form)
    assert response.status_code == 422
    assert shown in text(response)


def test_a_bin_code_refused_is_named_as_the_form_names_it(as_admin):
    point = make_point()
    response = as_admin.post(f"/admin/points/{point.id}/devices", {"code": "中文编号"})
    assert response.status_code == 422
    assert "设备编号：只能包含英文字母、数字和 _ . -" in text(response)


def test_deactivating_staff_asks_for_the_box_before_sending_and_answers_at_the_row(api, as_admin):
    worker = api.staff("worker", community_id=community_id("hengkang"))
    page = text(as_admin.get("/admin/staff"))
    form = re.search(rf'<form[^>]*action="/admin/staff/{worker.id}/active#fix".*?</form>', page, re.S)
    assert form is not None  # the answer opens at the row, where its message is shown
    assert re.search(r'name="confirm" value="yes" required', form[0])
    assert f'id="staff-{worker.id}"' in page
    refused = text(as_admin.post(f"/admin/staff/{worker.id}/active", {"active": "0"}))
    assert '<li id="err-confirm">请勾选确认：停用后该账号的所有登录立即失效</li>' in refused  # not 确认：请勾选确认：


# --- a form sent twice ------------------------------------------------------------------------------------------


def form_key(page: str, action: str) -> str:
    """The one-time key of the form posting to `action`."""
    form = re.search(rf'<form method="post" action="{re.escape(action)}".*?</form>', page, re.S)
    return re.search(r'name="form_key" value="([^"]+)"', form[0])[1]


def test_a_create_form_sent_twice_creates_once_and_the_repeat_lands_where_the_first_did(as_worker):
    form = {"name": "双击站", "kind": "station", "categories": ["paper"]}
    form["form_key"] = form_key(text(as_worker.get("/admin/points")), "/admin/points")
    first = as_worker.post("/admin/points", form)
    again = as_worker.post("/admin/points", form)
    assert first.status_code == again.status_code == 302
    assert again.location == first.location
    assert count(CollectionPoint, name="双击站") == 1
    assert as_worker.post("/admin/points", form).location == first.location  # a third time, before looking
    assert text(as_worker.get(again.location)).count("这份表单刚才已经提交过，没有重复提交") == 1
    # The same form with other values (the user went back and changed them) is another point.
    assert as_worker.post("/admin/points", form | {"name": "双击二站"}).status_code == 302
    assert count(CollectionPoint, name="双击二站") == 1
    # Back, and 创建 again: the page came afresh with a new key and the browser put the values back. The name, which
    # a community's points do not share, catches it.
    page = text(as_worker.get("/admin/points"))
    again = as_worker.post("/admin/points", form | {"form_key": form_key(page, "/admin/points")})
    assert again.status_code == 409
    assert "本社区已有名为「双击站」的回收点" in text(again)
    assert count(CollectionPoint, name="双击站") == 1


def test_a_refused_form_can_be_corrected_and_sent_with_the_same_key(as_worker):
    key = form_key(text(as_worker.get("/admin/points")), "/admin/points")
    refused = as_worker.post("/admin/points", {"name": "改正站", "kind": "station", "form_key": key})
    assert refused.status_code == 422  # no category: nothing stored, not even the key
    sent = as_worker.post(
        "/admin/points", {"name": "改正站", "kind": "station", "categories": ["glass"], "form_key": key}
    )
    assert sent.status_code == 302
    assert count(CollectionPoint, name="改正站") == 1


@pytest.mark.parametrize(
    ("path", "form", "model", "filters"),
    [
        ("/admin/communities", {"code": "twice", "name": "两次社区"}, Community, {"code": "twice"}),
        ("/admin/organizations", {"name": "两次公司", "kind": "enterprise"}, Organization, {"name": "两次公司"}),
        ("/admin/staff", {"username": "twice", "password": "a-long-password", "role": "admin"}, Staff,
         {"username": "twice"}),
    ],
)  # fmt: skip
def test_every_create_form_carries_its_key(as_admin, path, form, model, filters):
    form = form | {"form_key": form_key(text(as_admin.get(path)), path)}
    assert as_admin.post(path, form).status_code == as_admin.post(path, form).status_code == 302
    assert count(model, **filters) == 1  # not 409 编码已存在 for the first one's own repeat


def test_publishing_a_rule_twice_makes_one_version(as_admin):
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:paper"))
    form = {"activity": "sorting:paper", "co2e_g_per_unit": "1500", "points": "", "daily_cap_points": "80",
            "source": "双击测试", "form_key": form_key(page, "/admin/rules/publish")}  # fmt: skip
    versions = count(Rule, activity="sorting:paper")
    assert as_admin.post("/admin/rules/publish", form).status_code == 302
    assert as_admin.post("/admin/rules/publish", form).status_code == 302
    assert count(Rule, activity="sorting:paper") == versions + 1


def test_reloading_a_bins_registration_keeps_its_secret_and_says_so(as_admin):
    point = make_point()
    action = f"/admin/points/{point.id}/devices"
    form = {"code": "bin-reload-1", "form_key": form_key(text(as_admin.get(f"/admin/points/{point.id}")), action)}
    shown = as_admin.post(action, form)
    assert shown.status_code == 201
    device = db.session.scalar(sa.select(Device).filter_by(code="bin-reload-1"))
    assert device.secret in text(shown)
    reloaded = as_admin.post(action, form)
    assert reloaded.status_code == 302
    assert reloaded.location == f"/admin/points/{point.id}"
    page = text(as_admin.get(reloaded.location))
    assert "该设备刚才已经登记。密钥只显示一次：如未记下，请为它更换密钥" in page
    assert "设备编号已存在" not in page
    assert device.secret not in page
    db.session.expire_all()
    assert count(Device, code="bin-reload-1") == 1
    assert db.session.get(Device, device.id).secret == device.secret


def test_reloading_a_bins_new_secret_keeps_it_and_says_so(as_admin):
    point = make_point()
    device = sorting.register_device(SYSTEM, {"code": "bin-reload-2", "collection_point_id": point.id})
    page = text(as_admin.get(f"/admin/points/{point.id}"))
    action = f"/admin/points/{point.id}/devices/{device.id}/rotate"
    replaces = re.search(r'name="replaces" value="([0-9a-f]+)"', page)[1]
    form = {"confirm": "yes", "replaces": replaces, "form_key": form_key(page, action)}
    assert as_admin.post(action, form).status_code == 200
    db.session.expire_all()
    new = db.session.get(Device, device.id).secret
    reloaded = as_admin.post(action, form)
    assert (reloaded.status_code, reloaded.location) == (302, f"/admin/points/{point.id}")
    assert "该设备的密钥刚才已经更换。新密钥只显示一次：如未记下，请再更换一次" in text(as_admin.get(reloaded.location))
    db.session.expire_all()
    assert db.session.get(Device, device.id).secret == new


def test_the_sites_category_names_are_the_rules_titles(db_session):
    """A category is called the same on the point form, in a deposit's lines and in the rules (废纸, not 纸类)."""
    from admin.labels import CATEGORIES

    titles = {
        r.activity.removeprefix("sorting:"): r.title for r in db.session.scalars(sa.select(Rule).filter_by(version=1))
    }
    assert {code: titles[code] for code in CATEGORIES} == CATEGORIES


def test_correcting_a_version_not_yet_in_force_starts_from_it(api, as_admin, clock):
    start = (clock.now + timedelta(days=30)).astimezone(SHANGHAI)
    body = {"activity": "sorting:glass", "co2e_g_per_unit": 333, "source": "待生效的复核值", "daily_cap_points": 150,
            "effective_from": start.isoformat()}  # fmt: skip
    assert api.post("/rules", as_=api.staff("admin"), json=body).status_code == 201
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:glass"))
    assert "表单已填入第 2 版（尚未生效）的数值" in page
    assert 'name="co2e_g_per_unit" inputmode="decimal" value="333"' in page
    assert 'value="150"' in page
    assert ">待生效的复核值</textarea>" in page


def test_the_rules_page_gives_a_long_source_in_full_and_the_form_names_its_fields_as_shown(as_admin):
    """The source was cut at 60 characters, the rest in a title only a mouse's hover shows."""
    rules = text(as_admin.get("/admin/rules"))
    full = "中国家电回收行业协会（China household appliance recycling association），2023 年：每吨回收物 4.7 吨 CO₂e"
    assert f'<td class="muted" data-label="依据">{full}</td>' in rules
    assert "title=" not in rules
    refused = as_admin.post(
        "/admin/rules/publish", {"activity": "sorting:paper", "co2e_g_per_unit": "x", "source": "改"}
    )
    assert "减排量（克 CO₂e / 千克）：" in text(refused)
    alert = re.search(r'<div class="alert error" role="alert"[^>]*>(.*?)</div>', text(refused), re.S)[1]
    assert alert.count("必须是数字") == 1  # said once, beside its field, not again above as the API's message


def test_pages_carry_their_own_icon_so_browsers_ask_for_no_favicon(as_worker):
    """Without one a browser asks for /favicon.ico on every page, which is the API's 404."""
    page = text(as_worker.get("/admin/"))
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml,[^"]+">', page)
    poster = text(as_worker.get(f"/admin/points/{make_point().id}/poster"))  # a page of its own, not the site's
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml,[^"]+">', poster)
    assert "img-src 'self' data:" in as_worker.get("/admin/").headers["Content-Security-Policy"]


def test_create_forms_fold_away_above_their_lists_until_needed(as_worker):
    """On a phone the form would fill the first screen, and the points a worker looks after most days come below."""
    assert '<details class="panel create" open>' in text(as_worker.get("/admin/points"))  # nothing to list yet
    make_point()
    assert '<details class="panel create">' in text(as_worker.get("/admin/points"))
    refused = text(as_worker.post("/admin/points", {"name": "", "kind": "station"}))
    assert '<details class="panel create" open>' in refused  # the message and what was typed stay in view


def test_the_staff_form_groups_collection_points_by_community(as_admin):
    """With every point of the zone to pick from, a collector's point is found under its community."""
    xinhai, hengkang = make_point("鑫海湾一号站", "xinhaiwan"), make_point("恒康二号站")
    fieldset = re.search(
        r"<legend[^>]*>回收点（回收员）</legend>(.*?)</fieldset>", text(as_admin.get("/admin/staff")), re.S
    )[1]
    groups = dict(re.findall(r'<div><span class="muted">([^<]+)：</span>(.*?)</div>', fieldset, re.S))
    assert f'value="{hengkang.id}"' in groups["恒康社区"]
    assert f'value="{xinhai.id}"' not in groups["恒康社区"]
    assert f'value="{xinhai.id}"' in groups["鑫海湾"]


def test_a_cache_is_cleared_after_the_forms_writes_are_committed(app, as_admin, monkeypatch):
    """Under a form's one-time key the use case's commit waits for the key's; a rule cache cleared before it could be
    filled again from the old versions by another request in between."""
    from app.carbon import service as carbon

    other = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.NullPool)
    seen: list[int] = []

    def clear_cache():
        with other.connect() as conn:  # what any other request would read now
            seen.append(conn.scalar(sa.select(sa.func.count()).select_from(Rule).filter_by(activity="sorting:glass")))
        carbon._rules.clear()

    monkeypatch.setattr(carbon, "clear_cache", clear_cache)
    page = text(as_admin.get("/admin/rules/publish?activity=sorting:glass"))
    form = {"activity": "sorting:glass", "co2e_g_per_unit": "300", "points": "", "daily_cap_points": "",
            "source": "复核", "form_key": form_key(page, "/admin/rules/publish")}  # fmt: skip
    try:
        assert as_admin.post("/admin/rules/publish", form).status_code == 302
    finally:
        other.dispose()
    assert seen == [2]  # version 2 was visible to others when the cache went


def test_a_once_per_form_view_that_answers_with_a_page_must_say_where_a_repeat_goes(app, as_admin):
    from admin.forms import once_per_form

    @once_per_form()
    def page_only():
        db.session.add(Community(code="pageonly", name="只回页面"))
        return "ok", 200

    with app.test_request_context("/admin/x", method="POST", data={"form_key": "k1"}):
        g.admin_actor = SYSTEM
        with pytest.raises(TypeError, match="needs then="):
            page_only()
        db.session.rollback()
    assert count(Community, code="pageonly") == 0


def test_a_points_name_opens_its_page(as_worker):
    """On a phone the last column, once the only link, is off screen."""
    point = make_point()
    assert f'<a href="/admin/points/{point.id}">{point.name}</a>' in text(as_worker.get("/admin/points"))


# Accessibility (WCAG 2.1 AA, GB/T 37668): what a screen reader, a keyboard or weak eyes need of the pages.


def css(page: str, selector: str) -> str:
    """The declarations of the first rule for exactly `selector` in the page's style block."""
    style = re.search(r"<style>(.*?)</style>", page, re.S)[1]
    return re.search(rf"(?:^|[}}\s]){re.escape(selector)} \{{([^}}]*)\}}", style, re.M)[1]


def contrast(one: str, other: str) -> float:
    """WCAG's contrast ratio of two #rrggbb colours."""

    def luminance(colour: str) -> float:
        r, g_, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        r, g_, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g_, b))
        return 0.2126 * r + 0.7152 * g_ + 0.0722 * b

    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_headers_links_and_the_fields_borders_stand_out_enough(as_admin):
    """Menu links were #e8f3ec on the green (4.4:1, under 4.5:1 for text); field borders #c5d1c9 on white (1.6:1,
    under 3:1 for what shows a control's extent), so a field's edge was barely seen."""
    page = text(as_admin.get("/admin/"))
    colours = dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", page), fff="#ffffff")
    header = colours[re.search(r"background: var\(--([\w-]+)\)", css(page, "header.top"))[1]]
    for selector in ("header.top nav a", "header.top .who a"):
        colour = re.search(r"(?:^|[ ;])color: #([0-9a-f]{3,6})", css(page, selector))[1]
        assert contrast(colours.get(colour, f"#{colour}"), header) >= 4.5, selector
    border = re.search(r"border: 1px solid (#[0-9a-f]{6})", css(page, "input, select, textarea"))[1]
    assert contrast(border, "#ffffff") >= 3
    assert contrast(border, colours["bg"]) >= 3  # a filter form stands on the page's own background


def test_the_menu_is_named_says_where_one_is_and_can_be_skipped(api, as_admin):
    """A screen reader says which menu and which page in it is open; a keyboard passes its eight links in one stop."""
    resident = api.resident(community_code="hengkang")
    for path in ("/admin/residents", f"/admin/residents/{resident.id}"):  # a resident's page is under 居民
        page = text(as_admin.get(path))
        nav = re.search(r'<nav aria-label="主导航">(.*?)</nav>', page, re.S)[1]
        assert re.findall(r'<a href="([^"]+)"[^>]* aria-current="page"', nav) == ["/admin/residents"]
        assert page.index('<a class="skip" href="#top">跳到主要内容</a>') < page.index("<header")
        assert '<main id="top">' in page
    assert "top: -" in css(page, ".skip")  # out of sight until it has the focus
    assert "top: -" not in css(page, ".skip:focus")


def test_a_tables_action_column_has_a_heading(api, as_admin):
    """An empty <th> leaves a screen reader's column announcement blank."""
    make_point()
    for path in ("/admin/points", "/admin/rules"):
        page = text(as_admin.get(path))
        assert "<th></th>" not in page, path
        assert "<th>操作</th>" in page, path


def test_an_alliance_member_finds_its_own_organisation_by_words_not_by_colour_only(api, browser):
    orgs = list(db.session.scalars(sa.select(Organization).order_by(Organization.id).limit(2)))
    browser.login(username_of(api.staff("alliance", organization_id=orgs[0].id)))
    page = text(browser.get("/admin/organizations"))
    assert f'<td data-label="单位名称">{html.escape(orgs[0].name)}（本单位）</td>' in page
    assert f'<td data-label="单位名称">{html.escape(orgs[1].name)}</td>' in page


def test_a_codes_format_is_said_beside_its_field_not_in_a_hover_title_only(as_admin):
    """A title shows on a mouse's hover: not on a phone, nor to a keyboard, nor (reliably) to a screen reader."""
    point = make_point()
    for path, name in (
        ("/admin/staff", "username"),
        (f"/admin/points/{point.id}", "code"),
        ("/admin/communities", "code"),
    ):
        shown = re.search(rf'<label>([^<]*)<input name="{name}"[^>]* pattern=', text(as_admin.get(path)))[1]
        assert "字母、数字" in shown, path


def test_a_success_is_announced_and_shown_where_the_page_opens(api, as_admin):
    """After a correction the page opens at #deposits, below fifty ledger lines: the message at the top of the page
    was out of sight. role="status" has a screen reader read it."""
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    deposit = weighed(api, collector, point.id, resident, ("plastic", 12_500))
    path = f"/admin/residents/{resident.id}/deposits/{deposit['id']}/correction"
    done = as_admin.post(path, {"category": "plastic", "weight_g": "1250", "reason": "多打了一个 0", "confirm": "yes"})
    assert done.headers["Location"].endswith("#deposits")
    page = text(as_admin.get(done.headers["Location"]))
    assert re.search(r'<h2 id="deposits">回收投递</h2>\s*<div class="flash success" role="status">已更正第', page)
    assert page.count('class="flash') == 1  # not at the top as well
    done = as_admin.post(f"/admin/residents/{resident.id}/adjustments", {"delta": "5", "reason": "活动补发"})
    assert done.headers["Location"].endswith("#entries")
    page = text(as_admin.get(done.headers["Location"]))
    assert re.search(r'<h2 id="entries">积分记录</h2>\s*<div class="flash success" role="status">已调整 \+5', page)
    # elsewhere a message stays at the top of the page
    assert as_admin.post("/admin/communities", {"code": "xinqiao", "name": "新桥社区"}).status_code == 302
    page = text(as_admin.get("/admin/communities"))
    assert re.search(r'<main id="top">\s*<div class="flash success" role="status">已创建社区', page)


def test_a_message_for_a_place_another_page_lacks_is_shown_at_its_top(app, as_admin):
    from admin.forms import flash_at, flashed

    with app.test_request_context("/admin/"):
        flash_at("已调整 +5 积分", "entries")
        assert flashed("deposits", ("entries", "deposits")) == []
        assert flashed(None, ("deposits",)) == [("success", "已调整 +5 积分")]


def autofocused(page: str) -> list[str]:
    return re.findall(r"<[^<>]* autofocus[ >](?:[^<>]*>)?", page)


def test_a_refused_field_points_to_its_message_and_takes_the_focus(as_admin):
    """A screen reader on the marked field reads why (aria-describedby); the keyboard starts there (autofocus); the
    tab's title says the form was refused."""
    response = as_admin.post(
        "/admin/rules/publish", {"activity": "sorting:paper", "co2e_g_per_unit": "x", "source": "改"}
    )
    page = text(response)
    assert "<title>错误：发布规则新版本 · 湾区绿色积分</title>" in page
    first = re.search(r'<input name="co2e_g_per_unit"([^>]*)>', page)[1]
    assert 'aria-invalid="true" aria-describedby="err-co2e_g_per_unit" id="fix" autofocus' in first
    assert re.search(r'<li id="err-co2e_g_per_unit">减排量（克 CO₂e / 千克）：必须是数字</li>', page)
    second = re.search(r'<textarea name="source"([^>]*)>', page)[1]
    assert 'aria-invalid="true" aria-describedby="err-source"' in second
    assert 'id="err-source"' in page
    assert len(autofocused(page)) == 1  # the first of them only
    assert "data-focus" not in page
    fresh = text(as_admin.get("/admin/rules/publish?activity=sorting:paper"))
    assert "<title>发布规则新版本 · 湾区绿色积分</title>" in fresh
    assert autofocused(fresh) == []


def test_a_refusal_naming_no_field_focuses_its_message(as_admin):
    assert as_admin.post("/admin/communities", {"code": "xinqiao", "name": "新桥社区"}).status_code == 302
    page = text(as_admin.post("/admin/communities", {"code": "xinqiao", "name": "另一个"}))
    assert autofocused(page) == ['<div class="alert error" role="alert" tabindex="-1" id="fix" autofocus>']
    assert "<title>错误：社区 · 湾区绿色积分</title>" in page


def test_a_rows_refusal_marks_its_fields_and_a_correction_names_the_line_not_the_codes(api, as_admin):
    """The reversal and correction rows' fields were never marked (invalid() read the page's refusal only), and an
    unpicked category was told as 回收物：必须是以下之一：paper（废纸）、cardboard（纸板）… with no line."""
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    deposit = weighed(api, collector, point.id, resident, ("plastic", 12_500))
    path = f"/admin/residents/{resident.id}/deposits/{deposit['id']}/correction"
    # the second line left blank, the third given a weight but no category
    typed = {"category": ["plastic", "", ""], "weight_g": ["1250", "", "200"], "reason": "称重有误", "confirm": "yes"}
    refused = as_admin.post(path, typed)
    assert refused.status_code == 422
    page = text(refused)
    row = re.search(rf'<tr id="deposit-{deposit["id"]}">(.*?)</tr>', page, re.S)[1]
    assert '<li id="err-items-2-category">第 3 项品类：请选择品类</li>' in row
    assert "必须是以下之一" not in row
    selects = re.findall(r"<select name=\"category\"([^>]*)>", row)
    assert len(selects) == 3
    assert 'aria-invalid="true" aria-describedby="err-items-2-category" id="fix" autofocus' in selects[2]
    assert "aria-invalid" not in selects[0] + selects[1]
    assert "<title>错误：" in page
    # a weight refused on the third line is said on it too
    kilograms = text(
        as_admin.post(path, {**typed, "category": ["plastic", "", "glass"], "weight_g": ["1250", "", "0.2"]})
    )
    assert re.search(r'<input name="weight_g" aria-invalid="true" aria-describedby="err-items-2-weight_g"', kilograms)
    assert '<li id="err-items-2-weight_g">第 3 项重量：重量以克为单位' in kilograms
    # a reversal sent without its tick: the box is marked, not the reason
    entry = deposit["entry_id"]
    page = text(as_admin.post(f"/admin/residents/{resident.id}/entries/{entry}/reverse", {"reason": "称重错误"}))
    row = re.search(rf'<tr id="entry-{entry}">(.*?)</tr>', page, re.S)[1]
    assert re.search(
        r'name="confirm" value="yes" aria-invalid="true" aria-describedby="err-confirm" id="fix" autofocus', row
    )
    assert not re.search(r'<input name="reason" aria-invalid', row)
    assert len(autofocused(page)) == 1
    assert sorting.my_deposits(resident.id, None, None, 10)["items"][0].id == deposit["id"]  # nothing corrected


def controls_without_a_label(page: str) -> list[str]:
    """The page's fields that no <label> around them names (a placeholder or aria-label was no visible label)."""
    unlabelled = re.sub(r"<label[^>]*>.*?</label>", "", page, flags=re.S)
    return re.findall(r'<(?:select|textarea|input(?![^>]*type="hidden"))[^>]*>', unlabelled)


def test_every_field_has_a_visible_label(api, as_admin):
    """The correction's lines, its reason, a reversal's reason, a freeze's reason and a password reset had only a
    placeholder (gone once typed in) or an aria-label (never seen) to say what they were."""
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    weighed(api, collector, point.id, resident, ("plastic", 1_250), ("glass", 300))
    for path in (f"/admin/residents/{resident.id}", "/admin/residents", "/admin/staff", f"/admin/points/{point.id}"):
        page = text(as_admin.get(path))
        assert controls_without_a_label(page) == [], path
        assert "placeholder=" not in page, path
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    lines = re.findall(r'<fieldset class="line"><legend>(.*?)</legend>(.*?)</fieldset>', page, re.S)
    assert [legend for legend, _ in lines] == ["第 1 项", "第 2 项", "第 3 项（可留空）"]
    assert re.search(
        r'<label><span class="vh">第 2 项</span>重量（克）<input name="weight_g"[^>]* value="300"', lines[1][1]
    )
    assert "<label>更正原因（居民可见）" in page
    assert "<label>冲正原因（居民可见）" in page


def names(page: str, tag: str) -> list[tuple[str, str]]:
    """(accessible name, href) of the page's links or buttons: an aria-label, else the text, hidden words too."""
    found = []
    for attributes, inner in re.findall(rf"<{tag}\b([^>]*)>(.*?)</{tag}>", page, re.S):
        label = re.search(r'aria-label="([^"]*)"', attributes)
        name = label[1] if label else re.sub(r"\s+", " ", re.sub(r"<[^>]*>", "", inner)).strip()
        found.append((html.unescape(name), (re.search(r'href="([^"]*)"', attributes) or [None, ""])[1]))
    return found


def test_a_rows_links_and_buttons_say_whose_they_are(api, as_admin):
    """积分, 冻结, 冲正, 停用, 海报与设备, 发布新版本 in every row: a screen reader's list of links or buttons gave
    no clue which row each was for."""
    point = make_point()
    make_point("恒康二号站")
    collector = api.staff("collector", collection_point_ids=[point.id])
    residents = [api.resident(community_code="hengkang") for _ in range(2)]
    for resident in residents:
        weighed(api, collector, point.id, resident, ("plastic", 1_250))
    as_admin.post(f"/admin/residents/{residents[0].id}/adjustments", {"delta": "5", "reason": "补发"})
    api.staff("worker", community_id=community_id("hengkang"))
    pages = ["/admin/residents", "/admin/points", "/admin/rules", "/admin/staff", f"/admin/residents/{residents[0].id}"]
    for path in pages:
        page = text(as_admin.get(path)).split('<main id="top">')[1]
        links, buttons = names(page, "a"), names(page, "button")
        for name in {name for name, _ in links}:
            assert len({href for n, href in links if n == name}) == 1, (path, name)  # one name, one place
        row_buttons = [name for name, _ in buttons if name not in ("筛选", "创建", "创建账号", "确认调整")]
        assert len(row_buttons) == len(set(row_buttons)), (path, row_buttons)
    page = text(as_admin.get("/admin/residents"))
    nickname = db.session.get(Resident, residents[0].id).nickname or f"居民{residents[0].id}"
    assert f'aria-label="{nickname} 的积分">积分</a>' in page
    assert f'冻结<span class="vh"> {nickname}</span></button>' in page


def test_a_row_form_sends_its_page_to_the_field_to_fix(api, as_admin):
    """A browser skips autofocus on a page opened at a fragment (the row's #deposit-N was): the lower forms post to
    #fix, the id of the refused field (or the message), which the browser scrolls to and focuses."""
    resident = api.resident(community_code="hengkang")
    page = text(as_admin.get("/admin/residents"))
    assert re.search(rf'action="[^"]+/residents/{resident.id}/status[^"]*#fix"', page)
    refused = text(as_admin.post(f"/admin/residents/{resident.id}/status", {"status": "frozen", "reason": "x"}))
    row = re.search(rf'<tr id="resident-{resident.id}">(.*?)</tr>', refused, re.S)[1]
    assert re.search(
        r'<input name="reason"[^>]* aria-invalid="true" aria-describedby="err-reason" id="fix" autofocus', row
    )
    assert refused.count('id="fix"') == 1
    done = as_admin.post(f"/admin/residents/{resident.id}/status", {"status": "frozen", "reason": "多次违规"})
    assert 'id="fix"' not in text(as_admin.get(done.headers["Location"]))  # a success opens at its top, the message


def test_the_organisations_stack_on_a_phone_rather_than_scroll_where_a_keyboard_cannot(as_admin):
    """As a plain table on a phone the list scrolled sideways in a box no key could reach (axe: scrollable-region-
    focusable)."""
    page = text(as_admin.get("/admin/organizations"))
    assert '<table class="stack">' in page
    for row in re.findall(r"<tr>\s*(<td.*?)</tr>", page, re.S):
        assert all("data-label" in cell for cell in re.findall(r"<td([^>]*)>", row)), row[:120]


def test_what_a_person_typed_cannot_take_the_focus_marker(api, as_admin):
    """The error box's focus is settled after the page is rendered, by a marker in its tag: a nickname spelling the
    marker, shown in the page's title before the box, must not be taken for it (quotes are escaped in a page's text)."""
    from admin.forms import BOX_FOCUS

    resident = api.resident(community_code="hengkang")
    nickname = "小李" + str(BOX_FOCUS)
    assert api.patch("/me", as_=resident, json={"nickname": nickname}).status_code == 200
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    form = {"delta": "30", "reason": "活动补发",
            "reference": re.search(r'name="reference" value="([0-9a-f]{32})"', page).group(1)}  # fmt: skip
    assert as_admin.post(f"/admin/residents/{resident.id}/adjustments", dict(form)).status_code == 302
    again = text(as_admin.post(f"/admin/residents/{resident.id}/adjustments", dict(form)))
    assert autofocused(again) == ['<div class="alert error" role="alert" tabindex="-1" id="fix" autofocus>']


def test_a_correction_the_point_refuses_names_and_marks_the_line_as_the_form_numbers_it(api, as_admin):
    """A line left without a weight is not sent, so the service's line numbers (a category the point does not take)
    are the sent lines', not the form's: the refusal is told and marked on the form's line, in the service's words."""
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    deposit = weighed(api, collector, point.id, resident, ("plastic", 1_000), ("paper", 2_000))
    sorting.update_point(SYSTEM, point.id, {"categories": ["plastic", "paper"]})
    db.session.commit()
    path = f"/admin/residents/{resident.id}/deposits/{deposit['id']}/correction"
    form = {"category": ["plastic", "paper", "glass"], "weight_g": ["", "2000", "300"], "reason": "称重有误",
            "confirm": "yes"}  # fmt: skip
    refused = as_admin.post(path, form)
    assert refused.status_code == 422
    row = re.search(rf'<tr id="deposit-{deposit["id"]}">(.*?)</tr>', text(refused), re.S)[1]
    assert re.search(r'<li id="err-items-2-category">第 3 项品类：该回收点不收[^<]+</li>', row)
    selects = re.findall(r'<select name="category"([^>]*)>', row)
    assert "aria-invalid" not in selects[1]
    assert 'aria-invalid="true" aria-describedby="err-items-2-category" id="fix" autofocus' in selects[2]


def test_a_correction_refused_on_a_later_page_of_deposits_is_shown_on_its_row(api, as_admin):
    """The form keeps the page of deposits it was sent from: re-rendered on the first page, the refusal missed its
    row and fell to the page, where the adjustment form's reason took it (and the focus)."""
    point = make_point()
    collector = api.staff("collector", collection_point_ids=[point.id])
    resident = api.resident(community_code="hengkang")
    first = weighed(api, collector, point.id, resident, ("paper", 100))
    for _ in range(10):
        weighed(api, collector, point.id, resident, ("paper", 100))
    page = text(as_admin.get(f"/admin/residents/{resident.id}"))
    assert f'id="deposit-{first["id"]}"' not in page
    cursor = re.search(r'deposits_cursor=([^&"#]+)', page)[1]
    later = text(as_admin.get(f"/admin/residents/{resident.id}?deposits_cursor={cursor}"))
    action = re.search(rf'action="([^"]*/deposits/{first["id"]}/correction[^"]*)"', later)[1].replace("&amp;", "&")
    refused = as_admin.post(action.split("#")[0], {"category": "paper", "weight_g": "50", "reason": "x",
                                                    "confirm": "yes"})  # fmt: skip
    assert refused.status_code == 422
    body = text(refused)
    row = re.search(rf'<tr id="deposit-{first["id"]}">(.*?)</tr>', body, re.S)[1]
    assert 'id="fix" autofocus' in row
    assert autofocused(body) == re.findall(r"<[^<>]* autofocus[ >](?:[^<>]*>)?", row)
