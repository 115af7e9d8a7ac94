"""The server-rendered admin site (zh-CN) over the same services as the API."""

from admin.views import bp

__all__ = ["bp"]
