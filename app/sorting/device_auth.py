"""How a smart bin's request is authenticated around its view: the HMAC signature checked and burned, a replay of
a request whose answer a bin lost answered from its Idempotency-Key, and a refused request's signature kept as
used, in the transaction that keeps its refusal."""

from __future__ import annotations

from functools import wraps

from flask import g, request
from werkzeug.exceptions import HTTPException

from app.apidoc import extend_doc
from app.auth.guards import identity_for
from app.db import db
from app.errors import AppError, Duplicate, Unauthorized
from app.idempotency.service import on_kept_refusal, refusal_kept, stored_answer
from app.sorting import service

DEVICE_HEADER_DOCS = tuple(
    {
        "in": "header",
        "name": name,
        "required": True,
        "description": text,
        "schema": {"type": "string", "pattern": f"^{service.DEVICE_HEADERS[name].pattern}$"},
    }
    for name, text in (
        ("X-Device-Id", "设备的数字 id（登记时返回的 id，十进制；不是设备编号 code）"),
        (
            "X-Timestamp",
            "Unix 时间，整数秒（不是毫秒）；与服务器时间相差不得超过 5 分钟。会员码按签名时刻判断是否过期"
            "（设备时钟快于服务器时按服务器时间；最多宽限一个会员码有效期）：扫码后立即签名，网络延迟时稍后送达仍然有效",
        ),
        (
            "X-Signature",
            'hex(HMAC-SHA256(secret, METHOD + "\\n" + PATH + "\\n" + TIMESTAMP + "\\n" + hex(SHA256(body))))，'
            "末尾没有换行；签名本身十六进制大小写均可，body 的 SHA256 须为小写十六进制。METHOD 为大写（POST）；"
            "PATH 为路径，含 /api/v1 前缀（如 /api/v1/devices/deposits），按 %xx 解码后的形式"
            "（路径里不要用 %xx 编码），有查询字符串时按发送原样接上 ?query（不重排、不解码；没有查询字符串，"
            "或 ? 后为空时不带 ?）；TIMESTAMP 与 X-Timestamp 相同；body 为发送的原始字节；"
            "密钥为 secret 原样的 UTF-8 字节（不做十六进制解码）。同一时间戳、同一正文的签名相同，会被当作重放："
            "没收到应答时，5 分钟内原样重发（同一时间戳、同一签名）并带上同一个 Idempotency-Key，"
            "会拿到第一次的应答；第一次未送达则照常记录，会员码按签名时刻判断（见 X-Timestamp）；"
            "超过 5 分钟才换新的时间戳重新签名"
            "（仍用同一个 Idempotency-Key）。401 的 details.reason 说明原因：bad_headers（details.headers "
            "列出有误的头；X-Timestamp 有误时附 details.server_time）、unknown_device、device_retired、"
            "stale_timestamp（附 details.server_time）、bad_signature（附 details.string_to_sign："
            "服务器按上式拼出的待签名字符串，可与设备签名的内容逐字比对）",
        ),
    )
)


def _signed_path() -> str:
    """What a bin signs as PATH: the path, with its query string if it sends one, so that nothing in the URL goes
    unsigned."""
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def device_required(view):
    """Smart bins authenticate with an HMAC signature instead of a bearer token."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        try:
            g.actor = service.authenticate_device(request.headers, request.method, _signed_path(), request.get_data())
        except service.ReplayedSignature as replay:
            # A bin resending the very request whose answer it lost, with its Idempotency-Key, gets that answer;
            # without one, or before any answer was stored, a replay is refused.
            db.session.rollback()
            answer = stored_answer(identity_for("device", replay.device_id))
            if answer is None:
                raise
            return answer
        # The signature's row stays written (and its unique index held) through a refusal: an identical request
        # waiting on that index must find it used, not slip in between a rollback and a burn of its own.
        signature = request.headers["X-Signature"]
        # A refusal kept under an Idempotency-Key is marked in the commit that keeps it: no gap to lose the mark in.
        on_kept_refusal(lambda: service.mark_signature_refused(signature))
        after_signature = db.session.begin_nested()
        try:
            response = view(*args, **kwargs)
        except (AppError, HTTPException) as refusal:  # a use case's refusal, or the body's (400, 422)
            if not refusal_kept(refusal):  # "try again" (a 503): the same signed bytes may come back
                raise
            after_signature.rollback()
            service.mark_signature_refused(signature)
            db.session.commit()
            raise
        if response.headers.get("Idempotent-Replayed"):  # the key's first answer, but this signature is spent too
            if response.status_code >= 400:
                service.mark_signature_refused(signature)
            db.session.commit()
        return response

    return extend_doc(wrapper, view, errors=(Unauthorized, Duplicate), headers=DEVICE_HEADER_DOCS)
