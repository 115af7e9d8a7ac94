from tests.conftest import assert_error


def test_health(api):
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").get_json()["database"] == "ok"


def test_resident_login_and_me(api):
    me = api.resident("alice")
    body = api.get("/me", as_=me).get_json()
    assert body["balance"] == 0
    assert body["expiring_at"] is None


def test_unknown_path(api):
    assert_error(api.get("/nope"), 404, "not_found")
