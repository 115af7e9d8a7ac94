"""Printed by `make run` once gunicorn listens (its when_ready hook): where things are and how to log in."""

from app.config import listen_address
from app.seeding import demo_logins


def main() -> None:
    base = f"http://{listen_address()}"
    print(f"\n  API docs:  {base}/api/v1/docs   (OpenAPI: {base}/api/v1/openapi.json)")
    print(f"  Admin:     {base}/admin/")
    print(f"  Health:    {base}/healthz\n")
    print("  Demo staff logins (POST /api/v1/auth/login, or the admin site):")
    for login in demo_logins():
        print(f"    {login['role']:<10} {login['username']:<14} {login['password']}")
    print('  Demo residents: POST /api/v1/auth/wechat with {"code": "stub:demo-resident-1"}\n', flush=True)
